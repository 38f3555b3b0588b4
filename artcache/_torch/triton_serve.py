"""Reach into Inductor's Triton runtime (kernel bundles, static launchers, autotuning).

Kept apart from the CPU-side modules of this folder because it only matters on GPU and touches a second set
of internals (``torch._inductor.runtime`` and Triton itself).  Verified on torch 2.11 +
Triton 3.6 (H100, H200); on a CPU-only torch none of this runs.  What we touch and why:

* **Kernel objects in the entry.**  With ``bundle_triton_into_fx_graph_cache`` each
  ``CompiledFxGraph`` carries a ``TritonBundle``: the cubin/json files of every kernel and,
  with the static CUDA launcher (the default), the pickled ``CachingAutotuner`` of each
  kernel; ``triton_codec`` registers those classes with artcache's pickler.
* **Where cubins go on a hit.**  ``TritonBundler.read_and_emit`` writes the stored files into
  ``triton_cache_dir(device)`` (``$TRITON_CACHE_DIR``, shared with Triton's own compile
  cache) and the static launchers load them from there.  We point it at an
  artcache-private directory for the duration of the rebuild, so a hit never writes into
  (or reads from) Triton's cache: the cubins come from the entry alone.
* **Kernels without a static launcher.**  torch falls back to ``TritonCompileResult`` for
  kernels its static launcher cannot run (or with ``use_static_triton_launcher=False``).
  Those whose only problem is a long name (GPT-2 has two) get a static autotuner at capture
  time, see ``static_launch``.  For the others, torch loads them from their source on a
  hit and calls ``triton.compile``, which must then be a lookup in Triton's file cache: we
  point that cache at the same private directory, make Triton's key come out as it did in
  the compiling process (:func:`align_ptxas_with_compile_workers`), and serve their
  autotuning winners (matched by kernel name, see :class:`KernelRefs`) so only the winning
  config is looked up.  Triton then initializes its driver and builds its C launcher stub
  for them with the system compiler (cached in the private directory), as torch's own warm
  start does when its Triton cache is cold.
* **Autotuning winners.**  Recorded by the compiling process (``triton_tuning``).  On a hit
  ``AutotuneCache.create`` answers from the entry (no file, no ``torch_key``) and
  :func:`select_tuned` leaves each tuned kernel with its single winning launcher, so
  nothing is benchmarked or compiled at the first run.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _heuristics() -> Any:
    from torch._inductor.runtime import triton_heuristics

    return triton_heuristics


def _autotune_cache_module() -> Any:
    from torch._inductor.runtime import autotune_cache

    return autotune_cache


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# -- entry contents ------------------------------------------------------------------------
def bundles(entry: Any) -> list[Any]:
    """The TritonBundles of an entry's forward and backward graphs."""
    out = []
    for part in (getattr(entry, "compiled_fw", None), getattr(entry, "compiled_bw", None)):
        graph = getattr(part, "result", None)
        bundle = getattr(graph, "_triton_bundle", None)
        if bundle is not None:
            out.append(bundle)
    return out


def static_autotuners(entry: Any) -> list[Any]:
    return [sa for bundle in bundles(entry) for sa in (getattr(bundle, "static_autotuners", None) or ())]


def static_bundle_keys(entry: Any) -> dict[str, str]:
    """``{kernel file stem: bundle key}`` for the entry's statically launchable kernels.

    torch files each static autotuner in its bundle under ``CompiledTritonKernels.key(src)``
    = ``code_hash(src, extra=torch_key())`` and names the kernel's module file
    ``code_hash(src.strip()).py`` (``PyCodeCache.write``), both for the same ``src``: so the
    stem, which a hit computes from ``src`` without ``torch_key``, finds the bundle key."""
    keys = {}
    for sa in static_autotuners(entry):
        stem = kernel_file_key(getattr(sa.kernel, "filename", None)).removesuffix(".py")
        if stem and isinstance(getattr(sa, "cache_key", None), str):
            keys[stem] = sa.cache_key
    return keys


def kernel_file_key(filename: str | None) -> str:
    """A kernel's identity across processes: the basename of its source file, which
    Inductor names by a hash of the kernel source (the directory differs per process)."""
    return os.path.basename(filename or "")


def config_summary(cfg: Any) -> dict[str, Any]:
    """A Triton ``Config`` as plain data (for ``inspect``)."""
    out: dict[str, Any] = dict(getattr(cfg, "kwargs", {}) or {})
    for name in ("num_warps", "num_stages"):
        if hasattr(cfg, name):
            out[name] = getattr(cfg, name)
    return out


@dataclass(frozen=True)
class KernelRefs:
    """The Triton kernels of one compiled graph: source-file names of the statically
    launchable ones (their autotuners are in the entry) and the names of all of them in the
    generated code.  A kernel without a static launcher is rebuilt from its source on a
    hit, so the entry holds no autotuner to take its file name from; its winners are
    matched by name.  A name can repeat across graphs: the extra winners of a same-named
    kernel elsewhere are harmless (they are keyed by file and never match this graph's)."""

    files: frozenset[str]
    names: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.files or self.names)


# How Inductor's Python wrapper defines each Triton kernel: name = async_compile.triton('name', ...
_TRITON_KERNEL_DEF = re.compile(r"async_compile\.triton\(\s*['\"](\w+)['\"]")


def kernel_names_in(source_code: str) -> set[str]:
    return set(_TRITON_KERNEL_DEF.findall(source_code or ""))


# -- the hit: serve winners and cubins from the entry ------------------------------------------
class _ServedAutotuneCache:
    """Stands in for ``AutotuneCache`` on a hit: answers ``read_best`` from the entry."""

    def __init__(self, best: dict[str, Any], configs_hash: str) -> None:
        self.best = best
        self.configs_hash = configs_hash

    def read_best(self, inductor_meta: Any, configs: Any) -> Any:
        load = _autotune_cache_module()._load_cached_autotuning
        return load(dict(self.best), self.configs_hash, configs, inductor_meta)

    def save(self, *args: Any, **kwargs: Any) -> None:
        return None  # a hit records nothing


_WINNER_META = frozenset({
    "num_warps", "num_stages", "configs_hash", "found_by_coordesc", "time_taken_ms",
    "triton_cache_hash", "num_consumer_groups", "num_buffers_warp_spec", "extra_options",
})


def _matches(cfg: Any, best: Mapping[str, Any]) -> bool:
    kwargs = {k: v for k, v in best.items() if k not in _WINNER_META}
    return (
        dict(getattr(cfg, "kwargs", {}) or {}) == kwargs
        and getattr(cfg, "num_warps", None) == best.get("num_warps")
        and getattr(cfg, "num_stages", None) == best.get("num_stages")
    )


@dataclass(frozen=True)
class TunedSelection:
    """What :func:`select_tuned` did: kernel name -> "tuned" / "single-config" / "no-record" /
    "winner-missing" (for the log and for tests), and the source-file keys of the kernels
    it left with their stored winner alone (for :func:`serve_triton`)."""

    outcome: Mapping[str, str]
    settled_files: frozenset[str]


def select_tuned(
    entry: Any, winners: Mapping[str, dict[str, Any]], extra_results: Mapping[str, list[Any]]
) -> TunedSelection:
    """Leave each stored kernel with only its tuned winner (a compile-time config or one
    compiled after the bundle was taken), marked ``found_by_coordesc`` where it was, so the
    first run neither benchmarks configs nor runs coordinate descent.  Done here rather than
    in torch's ``recheck_autotune_cache`` because that only narrows kernels with several
    configs and, on torch 2.11, compiles a winner it does not hold."""
    if not winners:
        return TunedSelection({}, frozenset())
    th = _heuristics()
    outcome: dict[str, str] = {}
    settled: set[str] = set()
    for sa in static_autotuners(entry):
        kernel = sa.kernel
        file_key = kernel_file_key(getattr(kernel, "filename", None))
        results = list(kernel.compile_results)
        best = winners.get(f"{file_key}:{th.hash_configs([r.config for r in results])}")
        name = str(getattr(sa, "kernel_name", file_key))
        if best is None:
            outcome[name] = "single-config" if len(results) == 1 else "no-record"
            continue
        match = next((r for r in results + list(extra_results.get(file_key, ())) if _matches(r.config, best)), None)
        if match is None:
            outcome[name] = "winner-missing"
            continue
        if best.get("found_by_coordesc"):
            match.config.found_by_coordesc = True
        kernel.compile_results = [match]
        outcome[name] = "tuned"
        settled.add(file_key)
    return TunedSelection(outcome, frozenset(settled))


def rebuilt_through_triton(entry: Any, kernels: KernelRefs) -> bool:
    """Whether a hit on ``entry`` rebuilds some kernel through ``triton.compile`` (one the
    generated code defines that has no static autotuner in the entry)."""
    static = {str(getattr(sa, "kernel_name", "")) for sa in static_autotuners(entry)}
    return bool(kernels.names - static)


@contextlib.contextmanager
def serve_triton(
    winners: Mapping[str, dict[str, Any]], triton_dir: Path, *, through_triton: bool = False,
    bundle_keys: Mapping[str, str] | None = None, settled_files: frozenset[str] = frozenset(),
) -> Iterator[None]:
    """While active: stored cubins are emitted into and loaded from ``triton_dir`` (not
    Triton's cache), tuning answers come from ``winners``, and nothing is compiled in a
    worker pool (``compile_threads=1``: with everything prebuilt there is nothing to farm out,
    and asking whether the pool is ready would start it).  ``through_triton``: some kernel
    will be rebuilt through ``triton.compile`` (see :func:`align_ptxas_with_compile_workers`).
    ``bundle_keys``: :func:`static_bundle_keys` of the entry, so that finding its static
    launchers does not hash torch's sources (``torch_key``, a noticeable cost per process).
    ``settled_files``: :attr:`TunedSelection.settled_files`, kernels whose only launcher is
    their stored winner."""
    if not triton_available():
        yield
        return
    if through_triton:
        align_ptxas_with_compile_workers()
    import torch
    from torch._inductor import triton_bundler

    th = _heuristics()
    ac = _autotune_cache_module()

    def private_dir(device: int) -> str:
        # One directory for every device: Triton names its entries by a hash that covers
        # the target, and Triton's own cache lookup (below) sees a single directory.
        return str(triton_dir)

    def create(inductor_meta: Any, filename: str, configs_hash: str) -> Any:
        best = winners.get(f"{kernel_file_key(filename)}:{configs_hash}")
        return _ServedAutotuneCache(best, configs_hash) if best is not None else None

    from .patching import patched

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            torch._inductor.config.patch(
                bundle_triton_into_fx_graph_cache=True,  # read_and_emit is a no-op otherwise
                compile_threads=1,
            )
        )
        # Both modules imported triton_cache_dir by name; patch the names they call.
        for module in (triton_bundler, th):
            if hasattr(module, "triton_cache_dir"):
                stack.enter_context(patched(module, "triton_cache_dir", private_dir))
        stack.enter_context(patched(ac.AutotuneCache, "create", staticmethod(create)))
        if bundle_keys:
            stack.enter_context(_bundle_keys_served(bundle_keys))
        if settled_files and "_dynamic_scale_rblock" in th.CachingAutotuner.__dict__:
            stack.enter_context(_rblock_scaling_skipped(th.CachingAutotuner, settled_files))
        # torch 2.11's cache_hit_post_compile calls autotune_cache.inductor_meta_from_config()
        # only to start the *remote* autotune bundler; its backend hash initializes Triton's
        # driver, which runs `ldconfig -p` and builds Triton's launcher helper in
        # $TRITON_CACHE_DIR.  A hit reads no remote tuning: without a hash (the function
        # catches this RuntimeError) the bundler stays off and Triton's driver untouched.
        import torch.utils._triton as torch_triton

        stack.enter_context(patched(torch_triton, "triton_hash_with_backend", _no_backend_hash))
        # Kernels the static launcher cannot run (TritonCompileResult) are rebuilt by torch
        # through triton.compile, which finds them in Triton's *own* file cache: point that
        # cache at the directory the bundler just filled from the entry, so the lookup hits
        # and no kernel is generated or assembled again.
        stack.enter_context(_triton_file_cache_at(str(triton_dir)))
        # CachingAutotuner.__init__ sets $TRITON_CACHE_DIR, process-wide, to
        # triton_cache_dir() when it is unset: that would be our private directory (patched
        # above) for the rest of the process.  Put the variable back as it was.
        stack.enter_context(_env_restored("TRITON_CACHE_DIR"))
        yield


@contextlib.contextmanager
def _rblock_scaling_skipped(tuner_cls: Any, settled_files: frozenset[str]) -> Iterator[None]:
    """``CachingAutotuner._dynamic_scale_rblock`` does nothing for the settled kernels.

    Reaches into torch 2.11: ``precompile`` calls it on every kernel a hit loads unless the
    autotune cache answered (``autotune_cache_state == "hit"``), which for a kernel with one
    compile-time config it never does.  For a register-heavy kernel it compiles a candidate
    with half the reduction block and leaves two launchers to benchmark at the first run.
    The compiling process did exactly that and its first run chose; that winner is now the
    kernel's only result (:func:`select_tuned`), as after an autotune cache hit, for which
    torch skips this step too."""
    from .patching import patched

    original = tuner_cls.__dict__["_dynamic_scale_rblock"]

    def dynamic_scale_rblock(self: Any) -> Any:
        if kernel_file_key(getattr(self, "filename", None)) in settled_files:
            return None
        return original(self)

    with patched(tuner_cls, "_dynamic_scale_rblock", dynamic_scale_rblock):
        yield


@contextlib.contextmanager
def _bundle_keys_served(bundle_keys: Mapping[str, str]) -> Iterator[None]:
    """``CompiledTritonKernels.key`` answers the entry's sources from ``bundle_keys``.

    Reaches into torch: ``AsyncCompile.triton`` looks each kernel up, in the table where
    the bundle registered its static launchers, by ``code_hash(src, extra=torch_key())``;
    ``torch_key`` hashes every source file of torch.  The stored key is that same value as
    the compiling process computed it: the entry's key holds the torch version, as for
    everything else it stores.  Sources the entry does not know get torch's own key."""
    from torch._inductor import async_compile
    from torch._inductor.codecache import code_hash

    from .patching import patched

    table = getattr(async_compile, "CompiledTritonKernels", None)
    original = getattr(table, "key", None)
    if original is None:
        yield
        return

    def key(kernel_src: str) -> str:
        found = bundle_keys.get(code_hash(kernel_src.strip())) if isinstance(kernel_src, str) else None
        return found if found is not None else original(kernel_src)

    with patched(table, "key", staticmethod(key)):
        yield


@contextlib.contextmanager
def _env_restored(name: str) -> Iterator[None]:
    previous = os.environ.get(name)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def align_ptxas_with_compile_workers() -> None:
    """Point Triton at the ``ptxas`` torch's kernel compiles use, before this process first
    resolves one for Triton's cache key.

    Triton's key for a kernel includes ``get_ptxas_version(arch)``, cached per process at
    its first call.  torch sets ``$TRITON_PTXAS_PATH`` to its own ``ptxas`` (when it ships
    one: ``_set_triton_ptxas_path``) in each compile worker and just before each kernel
    compile in the main process, but the main process's first call comes earlier, from
    Inductor's codegen (``triton_hash_with_backend``), while the variable is unset.  So in
    one compile the kernels built in the main process and those built in workers carried
    keys made with two ``ptxas`` (seen on H100: Triton's own CUDA 12.8 and torch's 13.0),
    and a hit, which can resolve only one, missed the others and generated them again.
    Setting the variable first (on a miss before the compile, on a hit before any kernel
    loads), as torch itself does a moment later, gives one version to the compiling
    process, its workers and every hit.  A process that resolved the version before
    (another compile ran first) keeps its cached answer: Triton offers no supported way to
    change it, and a kernel whose lookup then misses is generated again, correct and
    slower."""
    if not triton_available():
        return
    try:
        from torch._inductor.runtime import compile_tasks
    except ImportError:
        return
    set_path = getattr(compile_tasks, "_set_triton_ptxas_path", None)
    if set_path is not None:
        set_path()


@contextlib.contextmanager
def _triton_file_cache_at(path: str) -> Iterator[None]:
    """Triton's file cache (``triton.runtime.cache.FileCacheManager``) reads its directory
    from ``triton.knobs.cache.dir`` (Triton >= 3.4) at every lookup; ``scope()`` restores
    the previous setting.  Older Triton reads ``$TRITON_CACHE_DIR`` each time instead."""
    import triton

    cache_knobs = getattr(getattr(triton, "knobs", None), "cache", None)
    if cache_knobs is not None and hasattr(cache_knobs, "scope"):
        with cache_knobs.scope():
            cache_knobs.dir = path
            yield
        return
    # Process-wide, like the knob: the rebuild runs on the compiling (main) thread.
    with _env_restored("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = path
        yield


def _no_backend_hash() -> str:
    raise RuntimeError("artcache: no Triton backend hash on a cache hit")


def private_triton_dir(base: Path) -> Path:
    return base / "triton"
