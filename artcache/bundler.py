"""The kernels and tuning an entry carries: captured during a compile, served on a hit.

This is artcache's counterpart of torch's ``TritonBundler`` and ``AutotuneCacheBundler``,
plus Inductor's C++ kernel libraries, behind one narrow API:

Miss (``backend.py``)
    :func:`capturing` wraps Inductor's compile and fills a :class:`CompileCapture`: torch's
    complete result (the ``BundledAOTAutogradResult``, Triton bundles inside it) and a
    :class:`KernelBundle` with every C++ library built.  On GPU it also starts recording
    the first runs' autotuning (winners appear after the compile returns), lines up the
    ``ptxas`` that Triton's keys hash, and gives a static launcher to kernels torch missed
    only for their long names.  :func:`triton_kernels` then names the entry's Triton
    kernels, and :func:`tuning_for` returns what their first runs chose, to be saved again.
Hit (``output_code.py``)
    :func:`serving` makes torch's rebuild find everything in the entry: C++ libraries
    loaded from its bytes, Triton kernels from its cubins (in a private directory, never
    Triton's own cache), each tuned kernel narrowed to its stored winner.  Nothing is
    compiled, benchmarked or tuned.
Inspect
    :func:`kernel_summary` and :func:`autotune_summary` describe them as plain data.

Everything version-specific lives in :mod:`artcache._torch`; this module only composes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._torch import capture as torch_capture
from ._torch import entry_parts, static_launch, triton_serve, triton_tuning
from ._torch.capture import CppKernel
from ._torch.triton_serve import KernelRefs

log = logging.getLogger(__name__)

__all__ = [
    "CompileCapture", "CppKernel", "KernelBundle", "KernelRefs", "ServePlan", "autotune_summary",
    "capturing", "kernel_summary", "serving", "triton_kernels", "tuning_for",
]


@dataclass(frozen=True)
class KernelBundle:
    """What an entry holds beside torch's own result.

    ``cpp``: C++ kernel libraries by the digest of their build inputs.
    ``winners``: ``"<kernel file>:<configs hash>"`` -> the winning config's data (the fields
    torch's ``AutotuneCache.save`` writes).
    ``tuned``: ``"<kernel file>"`` -> compiled winners that no compile-time kernel has
    (coordinate descent's, or a halved reduction block).
    """

    cpp: Mapping[str, CppKernel] = field(default_factory=dict)
    winners: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    tuned: Mapping[str, list[Any]] = field(default_factory=dict)

    def tuning_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
        return dict(self.winners), {k: list(v) for k, v in self.tuned.items()}

    def with_tuning(self, winners: Mapping[str, dict[str, Any]], tuned: Mapping[str, list[Any]]) -> KernelBundle:
        return replace(self, winners=dict(winners), tuned=dict(tuned))


@dataclass
class CompileCapture:
    """Filled when :func:`capturing` exits: torch's result and the kernel bundle."""

    entry: Any = None
    bundle: KernelBundle = field(default_factory=KernelBundle)
    # For a frozen graph (Inductor's freezing): the flat arguments its forward takes, and
    # its constants that are the model's own tensors (name -> lifted input index).
    frozen_args: tuple[int, ...] | None = None
    frozen_aliases: dict[str, Any] = field(default_factory=dict)  # name -> freezing.ModelConstant


@contextlib.contextmanager
def capturing(*, on_gpu: bool) -> Iterator[CompileCapture]:
    """Run the enclosed Inductor compile so that it leaves everything an entry needs."""
    if on_gpu:
        # Kernels tune at their first run, after the compile returns: record it.
        triton_tuning.install_tuning_recorder()
    result = CompileCapture()
    with contextlib.ExitStack() as stack:
        capture = stack.enter_context(torch_capture.capture_compile())
        if on_gpu and triton_serve.triton_available():
            # One ptxas for every kernel's Triton key, here and in compile workers, so
            # that the hit can find them all (align_ptxas_with_compile_workers).
            triton_serve.align_ptxas_with_compile_workers()
            stack.enter_context(static_launch.adopting_long_named_kernels())
        yield result
    # capture_compile has collected the built C++ libraries on its way out.
    result.entry = capture.entry
    result.bundle = KernelBundle(cpp=dict(capture.cpp_kernels))
    result.frozen_args = capture.frozen_selection
    result.frozen_aliases = dict(capture.frozen_aliases)


def triton_kernels(entry: Any) -> KernelRefs:
    """The entry's Triton kernels: files of the statically launchable ones, names of all."""
    files = {triton_serve.kernel_file_key(getattr(sa.kernel, "filename", None))
             for sa in triton_serve.static_autotuners(entry)} - {""}
    names: set[str] = set()
    for graph in entry_parts.output_codes(entry):
        if getattr(graph, "_triton_bundle", None) is not None:
            names |= triton_serve.kernel_names_in(getattr(graph, "source_code", "") or "")
    return KernelRefs(frozenset(files), frozenset(names))


def tuning_for(kernels: KernelRefs) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
    """Winners and compiled winners recorded so far in this process for ``kernels``."""
    return triton_tuning.recorder().for_kernels(kernels)


@dataclass(frozen=True)
class ServePlan:
    """What :func:`serving` set up.  ``through_triton``: some kernel has no static launcher
    and is rebuilt through ``triton.compile`` (a lookup in the private Triton cache)."""

    through_triton: bool
    tuned: Mapping[str, str]


@contextlib.contextmanager
def serving(entry: Any, bundle: KernelBundle) -> Iterator[ServePlan]:
    """While active, torch's rebuild of ``entry`` gets every kernel and tuning choice
    from the entry and compiles nothing."""
    library_dir = torch_capture.kernel_library_dir()
    tuned = triton_serve.select_tuned(entry, bundle.winners, bundle.tuned)
    if tuned.outcome:
        log.info("artcache: autotuning served from the entry: %s", sorted(tuned.outcome.items()))
    through_triton = triton_serve.rebuilt_through_triton(entry, triton_kernels(entry))
    with torch_capture.serve_cpp_kernels(bundle.cpp, library_dir), triton_serve.serve_triton(
        bundle.winners, triton_serve.private_triton_dir(library_dir), through_triton=through_triton,
        bundle_keys=triton_serve.static_bundle_keys(entry), settled_files=tuned.settled_files,
    ):
        yield ServePlan(through_triton, dict(tuned.outcome))


def kernel_summary(entry: Any, bundle: KernelBundle) -> list[dict[str, Any]]:
    """Every kernel of the entry as plain data (for ``inspect``)."""
    cpp = [{"name": k.key[:16], "kind": "cpp", "loader": k.cache_class, "bytes": len(k.library)}
           for k in sorted(bundle.cpp.values(), key=lambda k: k.key)]
    return cpp + entry_parts.triton_kernel_summaries(entry)


def autotune_summary(entry: Any, bundle: KernelBundle) -> list[dict[str, Any]]:
    """Each tuned Triton kernel: its configs and the choice the entry serves."""
    out = []
    for kernel_name, file_key, configs in entry_parts.static_autotuner_summaries(entry):
        chosen = [{k: v for k, v in data.items() if k != "configs_hash"}
                  for key, data in sorted(bundle.winners.items()) if key.partition(":")[0] == file_key]
        out.append({
            "kernel": kernel_name,
            "kind": "triton",
            "configs": len(configs),
            "choice": chosen[0] if chosen else (configs[0] if len(configs) == 1 else "tuned at first run"),
            "compiled_after_bundle": len(bundle.tuned.get(file_key, ())),
        })
    return out
