"""Give torch's static launcher the kernels it missed only because of a long name.

Reach into torch 2.11's Triton runtime (``torch._inductor.runtime.triton_heuristics``,
``triton_bundler``), verified on H100 with Triton 3.6; on a CPU-only torch none of this runs.

Why: torch checks whether a compiled kernel can be launched statically by looking for
``<triton cache dir>/<hash>/<kernel name>.cubin``, but Triton writes its files under the
name cut to 150 characters (``src.name[:150]`` in ``triton.compile``, to stay under file
name limits).  A kernel with a longer name (GPT-2 has such attention kernels) therefore
falls back to ``TritonCompileResult``: it is not in the compile's static autotuners, so on
a hit torch loads it from source and calls ``triton.compile`` (a lookup in Triton's file
cache, keyed among other things by the ``ptxas`` version: see
``triton_serve.align_ptxas_with_compile_workers``), and Triton initializes its driver and
builds a C launcher stub with the system compiler.

What we do, in the compiling process only, after torch's own ``CachingAutotuner.precompile``:
for a kernel whose every non-static result failed on that path alone, run torch's own
``can_statically_launch`` again with the cubin visible under the full name (a symlink in a
temporary directory), and add a static autotuner for it to the bundle exactly as
``TritonBundler.put_static_autotuner`` does, keeping the cubin bytes in it (torch drops
them, relying on the bundled files, which here have the cut name).  The compiling process
keeps running the kernel as torch set it up; a hit runs the same cubin through torch's
static launcher, like every other kernel.  A kernel torch refused for any other reason
(user-defined kernel, launch attributes, scratch memory, several CTAs, static launcher
disabled) is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Triton's cut in triton.compile (3.x): file names are src.name[:150].
_TRITON_NAME_LIMIT = 150


def _kernel_name(tuner: Any) -> str:
    return str((getattr(tuner, "inductor_meta", None) or {}).get("kernel_name", "a kernel"))


@contextlib.contextmanager
def adopting_long_named_kernels() -> Iterator[None]:
    """While active (one compile, under the capture lock), kernels compiled for the bundle
    that torch could not launch statically only because of their name get a static
    autotuner in the bundle."""
    from torch._inductor.runtime import triton_heuristics as th

    from .patching import patched

    tuner_cls = th.CachingAutotuner
    original = tuner_cls.__dict__["precompile"]

    def precompile(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        key = kwargs.get("static_triton_bundle_key")
        if key is not None and not kwargs.get("warm_cache_only", False):
            try:
                if _adopt(self, key):
                    log.debug("artcache: %s gets a static launcher in the entry", _kernel_name(self))
            except (OSError, AttributeError, TypeError, ValueError) as exc:
                # An optimization of the entry, never a reason to fail the user's compile:
                # the temporary symlink may be refused, or a torch version may lay these
                # internals out differently.  The kernel then stays as torch left it.
                log.info("artcache: kept %s without a static launcher: %s", _kernel_name(self), exc)
        return out

    with patched(tuner_cls, "precompile", precompile):
        yield


def _adopt(tuner: Any, bundle_key: str) -> bool:
    import torch
    from torch._inductor.runtime import triton_heuristics as th
    from torch._inductor.triton_bundler import TritonBundler

    results = list(getattr(tuner, "compile_results", None) or ())
    if (
        not results
        or not torch._inductor.config.use_static_triton_launcher
        or getattr(TritonBundler, "_static_autotuners", None) is None  # not collecting a bundle
        or all(isinstance(r, th.StaticTritonCompileResult) for r in results)
    ):
        return False
    adopted: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="artcache-cubin-") as tmp:
        for result in results:
            if isinstance(result, th.StaticTritonCompileResult):
                adopted.append(result)
                continue
            static = _static_result(tuner, result, Path(tmp))
            if static is None:
                return False
            adopted.append(static)
    raws = [r.kernel.cubin_raw for r in adopted]
    if any(raw is None for raw in raws):
        return False
    # TritonBundler.put_static_autotuner snapshots the tuner (prepare_for_pickle, deepcopy,
    # restore); it snapshots whatever compile_results holds, so show it the static ones
    # for the duration of the call.  The live tuner keeps its own results and launchers.
    live = tuner.compile_results
    before = len(TritonBundler._static_autotuners)
    tuner.compile_results = adopted
    try:
        TritonBundler.put_static_autotuner(bundle_key, tuner)
    finally:
        tuner.compile_results = live
    added = TritonBundler._static_autotuners[before:]
    if len(added) != 1:
        return False
    # prepare_for_caching dropped the cubin bytes (torch expects the bundle's file under the
    # full name, which does not exist): keep them, so the hit writes the file itself.
    for result, raw in zip(added[0].kernel.compile_results, raws):
        result.kernel.cubin_raw = raw
    return True


def _static_result(tuner: Any, result: Any, tmp: Path) -> Any:
    """A StaticTritonCompileResult for ``result`` (a TritonCompileResult) if torch's own
    check passes once the cubin is found under the kernel's full name, else None."""
    from torch._inductor.runtime import triton_heuristics as th

    from .patching import patched

    binary = getattr(result, "kernel", None)
    fn = getattr(getattr(binary, "src", None), "fn", None)
    name = getattr(fn, "__name__", None)
    if type(result) is not th.TritonCompileResult or not name or len(name) <= _TRITON_NAME_LIMIT:
        return None  # not the long-name case: torch refused it for a reason of its own
    meta = getattr(result, "compile_meta", None) or {}
    ext = th.GPU_KERNEL_BIN_EXTS.get(meta.get("device_type", "cuda"), ".cubin")
    hash_dir = th.triton_hash_to_path_key(binary.hash)
    written = Path(th.triton_cache_dir(meta.get("device", 0) or 0), hash_dir, name[:_TRITON_NAME_LIMIT] + ext)
    if not written.is_file():
        return None
    full = tmp / hash_dir / (name + ext)
    full.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(written, full)
    # torch's check, unchanged, looking in our directory; it sets binary._cubin_path to the
    # symlink (read only by the static kernel's constructor, which takes asm["cubin"]).
    with patched(th, "triton_cache_dir", lambda device: str(tmp)):
        kernel = th.StaticTritonCompileResult.can_statically_launch(
            binary, tuner.inductor_meta, tuner.triton_meta, tuner.heuristic_type
        )
    if kernel is None:
        return None
    kernel.cubin_path = None  # the symlink goes with the temporary directory
    return th.StaticTritonCompileResult(kernel, result.config, result.compile_meta, result.inductor_meta)
