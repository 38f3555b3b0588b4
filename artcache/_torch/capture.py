"""The miss side: run Inductor so that it leaves its complete result, and its C++ kernels.

* **Capture.**  AOTAutograd can build a ``BundledAOTAutogradResult``: forward and
  backward ``CompiledFxGraph`` (generated source, Triton bundle, output strides, guards)
  plus the runtime metadata its wrappers need.  torch builds it only for its own
  AOTAutogradCache, so during our compile we turn that cache on with three stubs: the key
  function returns a nonce (skips hashing torch's sources), the lookup always misses (no
  disk read), and ``save`` keeps the entry in memory instead of pickling it to disk.  This is
  the configuration torch's own precompile (``torch/_dynamo/aot_compile.py``) uses.
* **C++ kernels.**  They are not in the entry (torch finds them again by recompiling or by a
  cache path derived from the compiler command line, which costs a vec-ISA probe subprocess).
  ``CppCodeCache.load_async`` is wrapped to record each built library under a digest of its
  *inputs*, and on a hit answered from the entry by ``cls._load_library`` on the stored bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import Uncacheable
from .freezing import FrozenRecord, hold_constants, recording
from .patching import PATCH_LOCK, patched


def autograd_cache_module() -> Any:
    from torch._functorch._aot_autograd import autograd_cache

    return autograd_cache


def _cpp_code_cache() -> Any:
    from torch._inductor.codecache import CppCodeCache

    return CppCodeCache


@dataclass(frozen=True)
class CppKernel:
    """A built C++ library as ``CppCodeCache.load_async`` produced it."""

    key: str  # digest of the load_async inputs (class, code, flags), not of a command line
    cache_class: str  # CppCodeCache subclass name: decides how the library is loaded
    library: bytes


@dataclass
class Capture:
    """What one compile produced, filled in while :func:`capture_compile` runs."""

    entry: Any = None
    cpp_kernels: dict[str, CppKernel] = dataclasses.field(default_factory=dict)
    # A frozen graph's argument selection (artcache._torch.freezing), else None.
    frozen_selection: tuple[int, ...] | None = None
    # A frozen graph's constants that are views of lifted inputs (``freezing.ModelConstant``).
    frozen_aliases: dict[str, Any] = dataclasses.field(default_factory=dict)
    _pending: dict[str, tuple[type, Callable[[], Any]]] = dataclasses.field(default_factory=dict)

    def collect_kernels(self) -> None:
        """Read the built libraries.  Called after the compile, when every build is done."""
        for key, (cls, get_result) in self._pending.items():
            lib = get_result()
            path = getattr(lib, "__file__", None) or getattr(lib, "_name", None)
            if not path:
                raise Uncacheable("cpp-kernel", f"cannot locate the library of kernel {key[:12]}")
            self.cpp_kernels[key] = CppKernel(key, cls.__name__, Path(path).read_bytes())
        self._pending.clear()


def _load_async_key(cls: type, bound: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for part in (
        cls.__name__,
        bound.get("main_code", ""),
        bound.get("device_type", "cpu"),
        repr(tuple(bound.get("extra_flags", ()))),
        bound.get("optimized_code") or "",
    ):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


# Positional order of CppCodeCache.load_async after ``cls`` (the same in torch 2.11-2.13).
_LOAD_ASYNC_PARAMS = ("main_code", "device_type", "submit_fn", "extra_flags", "optimized_code")


def _bind_load_async(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = dict(zip(_LOAD_ASYNC_PARAMS, args))
    bound.update(kwargs)
    return bound


@contextlib.contextmanager
def capture_compile() -> Iterator[Capture]:
    """Run the enclosed ``compile_fx`` so that it leaves its complete result in a Capture."""
    ac = autograd_cache_module()
    cpp = _cpp_code_cache()
    capture = Capture()
    frozen = FrozenRecord()
    original_load_async = cpp.__dict__["load_async"]

    def save(key: str, entry: Any, remote: bool = False) -> None:
        # pre_save copies each CompiledFxGraph and strips what cannot outlive the process
        # (current_callable, the live module); torch calls it before pickling, as do we.
        entry.pre_save()
        if getattr(entry, "serialized_bw_module", None) is not None:
            # The backward graph as a pickled GraphModule, whose reload execs stored Python
            # source; only compiled autograd reads it, and the backward is already compiled.
            entry.serialized_bw_module = None
        if frozen.frozen:
            # A frozen forward names its constants; the entry must hold them.  Raising
            # here would fail the user's compile: an entry that cannot be made is none.
            try:
                if frozen.selection is None:
                    return
                hold_constants(entry, frozen)
            except Uncacheable:
                return
            finally:
                frozen.gm = frozen.params = None
            capture.frozen_selection = frozen.selection
            capture.frozen_aliases = dict(frozen.aliases)
        capture.entry = entry

    def load_async(cls: type, *args: Any, **kwargs: Any) -> Any:
        get_result = original_load_async.__func__(cls, *args, **kwargs)
        key = _load_async_key(cls, _bind_load_async(args, kwargs))
        capture._pending[key] = (cls, get_result)
        return get_result

    with contextlib.ExitStack() as stack:
        stack.enter_context(PATCH_LOCK)
        stack.enter_context(
            torch._functorch.config.patch(
                enable_autograd_cache=True,  # makes AOTAutograd build an entry at all
                force_autograd_cache=True,
                bundled_autograd_cache=True,  # entry holds the CompiledFxGraphs; FxGraphCache bypassed
                force_non_lazy_backward_lowering=True,  # backward compiled now, so the entry is complete
                strict_autograd_cache=True,  # a bypass raises instead of silently saving nothing
                enable_remote_autograd_cache=False,
            )
        )
        stack.enter_context(
            torch._inductor.config.patch(
                fx_graph_cache=False, fx_graph_remote_cache=False, bundle_triton_into_fx_graph_cache=True
            )
        )
        stack.enter_context(patched(ac, "autograd_cache_key", lambda *a, **k: ("artcache-capture", [])))
        stack.enter_context(patched(ac.AOTAutogradCache, "_lookup", staticmethod(lambda *a, **k: None)))
        stack.enter_context(patched(ac.AOTAutogradCache, "save", staticmethod(save)))
        stack.enter_context(patched(cpp, "load_async", classmethod(load_async)))
        stack.enter_context(recording(frozen))
        yield capture
    capture.collect_kernels()


@contextlib.contextmanager
def serve_cpp_kernels(kernels: Mapping[str, CppKernel], library_dir: Path) -> Iterator[None]:
    """While active, ``CppCodeCache.load_async`` loads stored libraries and never compiles."""
    cpp = _cpp_code_cache()
    library_dir.mkdir(parents=True, exist_ok=True)

    def load_async(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = _load_async_key(cls, _bind_load_async(args, kwargs))
        kernel = kernels.get(key)
        if kernel is None or kernel.cache_class != cls.__name__:
            raise Uncacheable("cpp-kernel-missing", f"entry lacks C++ kernel {key[:12]} ({cls.__name__})")
        path = _materialize(kernel, library_dir)
        # torch's own loader: dlopen for plain libraries, import as "<key>.<entry_function>"
        # (with the tensor data-pointer env var set) for Python-binding kernels.
        lib = cls._load_library(str(path), key)
        return lambda: lib

    with PATCH_LOCK, patched(cpp, "load_async", classmethod(load_async)):
        yield


def _materialize(kernel: CppKernel, library_dir: Path) -> Path:
    """Write the library under a name derived from its bytes, so an existing file with that
    name already holds them (no re-read) and concurrent writers publish the same content."""
    digest = hashlib.sha256(kernel.library).hexdigest()[:32]
    path = library_dir / f"{kernel.cache_class}-{digest}.so"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(kernel.library)
        os.replace(tmp, path)
    return path


def kernel_library_dir() -> Path:
    """Where loaded C++ kernels are written (dlopen needs a file): under Inductor's cache dir."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "artcache_kernels"
