"""The miss side of Triton autotuning: record what a compiling process's first runs choose.

Multi-config pointwise/reduction kernels and coordinate-descent tuning
(``mode="max-autotune"``) benchmark at the *first run*, after the compile-time bundle was
taken; so does a single-config reduction kernel for which ``_dynamic_scale_rblock`` compiled
a candidate with a smaller reduction block.  Torch remembers a winner in
``<kernel>.best_config`` files through ``AutotuneCache.save`` (none for a single-config
kernel), keyed with ``torch_key()`` (a hash of torch's sources, slow to compute).  The wrappers
installed here keep, in the compiling process, every winner and, where the winning config
is one no compile-time kernel has, its compiled kernel; the backend then re-saves the entry
with them, and the hit serves them (``triton_serve.select_tuned`` and ``serve_triton``).

Reaches into torch 2.11's ``CachingAutotuner`` and ``AutotuneCache`` (verified on H100 with
Triton 3.6); on a CPU-only torch nothing is installed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .triton_serve import (
    KernelRefs,
    _autotune_cache_module,
    _heuristics,
    kernel_file_key,
    triton_available,
)


@dataclass
class TuningRecorder:
    """Process-wide record of autotuning done by kernels this process compiled.

    ``winners``: ``"<kernel file>:<configs hash>"`` -> the data ``AutotuneCache.save`` stores
    (config kwargs, warps, stages, ``configs_hash``, ``found_by_coordesc``).
    ``extra_results``: ``"<kernel file>"`` -> compiled launch results for winning configs that
    no compile-time kernel has (coordinate descent's, or a halved reduction block from
    ``_dynamic_scale_rblock``), copied with their cubin bytes.
    """

    winners: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_results: dict[str, list[Any]] = field(default_factory=dict)
    # "<kernel file>" -> the kernel's name in the generated code, for kernels an entry
    # knows only by name (those without a static launcher, see CompiledGraph.triton_kernels)
    names: dict[str, str] = field(default_factory=dict)
    version: int = 0  # bumped on every new record: lets the backend re-save only when needed
    lock: threading.Lock = field(default_factory=threading.Lock)
    # CachingAutotuner -> its configs before _dynamic_scale_rblock added candidates (torch
    # drops the compile-time list, tuner.configs, once compiled); weak: tuners die with
    # their graphs.
    bundled_configs: weakref.WeakKeyDictionary[Any, list[Any]] = field(default_factory=weakref.WeakKeyDictionary)

    def for_kernels(self, kernels: KernelRefs) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
        with self.lock:
            files = set(kernels.files) | {f for f, name in self.names.items() if name in kernels.names}
            winners = {k: dict(v) for k, v in self.winners.items() if k.partition(":")[0] in files}
            extra = {k: list(v) for k, v in self.extra_results.items() if k in files}
        return winners, extra


_RECORDER = TuningRecorder()
_INSTALLED = False
_INSTALL_LOCK = threading.Lock()
_CURRENT = threading.local()  # the CachingAutotuner whose tuning is running on this thread


def recorder() -> TuningRecorder:
    return _RECORDER


def install_tuning_recorder() -> None:
    """Wrap the tuning entry points (the autotuner, coordinate descent, the autotune cache's
    save), the per-config compile and ``_dynamic_scale_rblock``, once per process (tuning
    happens at the first run, after the backend returned, so the wrappers cannot be scoped
    to a compile)."""
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED or not triton_available():
            return
        th = _heuristics()
        ac = _autotune_cache_module()
        tuner_cls = th.CachingAutotuner
        original_save = ac.AutotuneCache.save
        original_one = tuner_cls.autotune_to_one_config
        original_coordesc = getattr(tuner_cls, "coordinate_descent_tuning", None)
        original_precompile_config = tuner_cls._precompile_config
        original_scale = tuner_cls.__dict__.get("_dynamic_scale_rblock")

        def autotune_to_one_config(self: Any, *args: Any, **kwargs: Any) -> Any:
            with _tuning(self):
                out = original_one(self, *args, **kwargs)
                _record_scaled_choice(self)
                return out

        def coordinate_descent_tuning(self: Any, launcher: Any, *args: Any, **kwargs: Any) -> Any:
            with _tuning(self):
                winner = original_coordesc(self, launcher, *args, **kwargs)
                # A compile-time config that won was not compiled during tuning: not kept.
                compiled = getattr(_CURRENT, "compiled", None) or {}
                _keep_compiled_result(self, compiled.get(_config_key(winner.config)), found_by_coordesc=True)
                return winner

        def dynamic_scale_rblock(self: Any, *args: Any, **kwargs: Any) -> Any:
            # Runs in precompile, at compile time: remember what the bundle holds (the
            # results before the candidates), for _record_scaled_choice at the first run.
            before = [r.config for r in getattr(self, "compile_results", None) or ()]
            out = original_scale(self, *args, **kwargs)
            if len(getattr(self, "compile_results", None) or ()) > len(before):
                with _RECORDER.lock:
                    _RECORDER.bundled_configs[self] = before
            return out

        def precompile_config(self: Any, cfg: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_precompile_config(self, cfg, *args, **kwargs)
            compiled = getattr(_CURRENT, "compiled", None)
            if compiled is not None and getattr(_CURRENT, "tuner", None) is self:
                compiled[_config_key(cfg)] = result
            return result

        def save(self: Any, config: Any, time_taken_ns: int, *args: Any, **kwargs: Any) -> Any:
            out = original_save(self, config, time_taken_ns, *args, **kwargs)
            tuner = getattr(_CURRENT, "tuner", None)
            found = bool(kwargs.get("found_by_coordesc", args[0] if args else False))
            if tuner is not None and getattr(tuner, "filename", None):
                _record_winner(tuner, self.configs_hash, config, found)
            return out

        ac.AutotuneCache.save = save
        tuner_cls.autotune_to_one_config = autotune_to_one_config
        if original_coordesc is not None:
            tuner_cls.coordinate_descent_tuning = coordinate_descent_tuning
        tuner_cls._precompile_config = precompile_config
        if original_scale is not None:
            tuner_cls._dynamic_scale_rblock = dynamic_scale_rblock
        _INSTALLED = True


@contextlib.contextmanager
def _tuning(tuner: Any) -> Iterator[None]:
    outer = (getattr(_CURRENT, "tuner", None), getattr(_CURRENT, "compiled", None))
    _CURRENT.tuner, _CURRENT.compiled = tuner, {}
    try:
        yield
    finally:
        _CURRENT.tuner, _CURRENT.compiled = outer


def _config_key(cfg: Any) -> Any:
    return _heuristics().triton_config_to_hashable(cfg)


def _record_winner(tuner: Any, configs_hash: str, cfg: Any, found_by_coordesc: bool) -> None:
    # The same fields AutotuneCache.save writes to a .best_config file, read back by
    # torch's own _load_cached_autotuning on the hit.
    data: dict[str, Any] = {
        **cfg.kwargs,
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
        "configs_hash": configs_hash,
        "found_by_coordesc": found_by_coordesc,
    }
    if getattr(_autotune_cache_module(), "HAS_WARP_SPEC", False):
        data["num_consumer_groups"] = getattr(cfg, "num_consumer_groups", 0)
        data["num_buffers_warp_spec"] = getattr(cfg, "num_buffers_warp_spec", 0)
    file_key = kernel_file_key(tuner.filename)
    key = f"{file_key}:{configs_hash}"
    name = (getattr(tuner, "inductor_meta", None) or {}).get("kernel_name")
    with _RECORDER.lock:
        if name:
            _RECORDER.names[file_key] = str(name)
        if _RECORDER.winners.get(key) != data:
            _RECORDER.winners[key] = data
            _RECORDER.version += 1


def _record_scaled_choice(tuner: Any) -> None:
    """Record the first-run choice of a kernel ``_dynamic_scale_rblock`` added candidates to.

    Reaches into torch 2.11's ``CachingAutotuner``: ``precompile`` runs
    ``_dynamic_scale_rblock`` after the static autotuner was bundled; where the compiled
    kernel uses many registers it compiles a config with half the reduction block, and the
    first run benchmarks it with the others.  Two things of that choice would be lost:
    for a kernel with one compile-time config torch has no ``AutotuneCache`` and saves no
    winner (``check_autotune_cache`` wants several configs), and a winning candidate is in
    no bundle.  A warm start (torch's own too) would then compile the candidate again and
    benchmark again (GPT-2 training's loss kernel: loading the kernel from its source, a
    ``triton.compile``, Triton's driver helper built with gcc and, through that path,
    Inductor's compiler imported).  Keep the
    winner as ``AutotuneCache.save`` would have (same key: the bundled configs' hash) where
    torch saves none, and the winning candidate's compiled kernel, so the hit comes up with
    exactly this kernel (``triton_serve.select_tuned`` and ``serve_triton``)."""
    launchers = getattr(tuner, "launchers", None) or ()
    with _RECORDER.lock:
        bundled = _RECORDER.bundled_configs.get(tuner)
    if len(launchers) != 1 or not bundled or not getattr(tuner, "filename", None):
        return  # not a kernel _dynamic_scale_rblock gave candidates
    winner = launchers[0].config
    if not getattr(tuner, "save_cache_hook", None):  # else AutotuneCache.save recorded it (above)
        _record_winner(tuner, _heuristics().hash_configs(bundled), winner, False)
    key = _config_key(winner)
    if all(_config_key(c) != key for c in bundled):
        result = next((r for r in getattr(tuner, "compile_results", ()) if _config_key(r.config) == key), None)
        _keep_compiled_result(tuner, result, found_by_coordesc=False)


def _keep_compiled_result(tuner: Any, result: Any, *, found_by_coordesc: bool) -> None:
    """Keep the compiled kernel of a winner whose config no compile-time kernel has
    (coordinate descent's, or a smaller reduction block's): compiling it on the hit is what
    we must not do."""
    if result is None or type(result).__name__ != "StaticTritonCompileResult":
        return  # not compiled after the bundle, or not statically launchable
    snapshot = copy.deepcopy(result)  # __getstate__ drops the CUDA module/function handles
    # Loading the kernel clears cubin_path and cubin_raw: find the file where
    # StaticTritonCompileResult.reload_cubin_path looks for it.
    path = getattr(result.kernel, "cubin_path", None) or _cubin_location(result)
    if getattr(snapshot.kernel, "cubin_raw", None) is None:
        if not path or not os.path.exists(path):
            return
        snapshot.kernel.cubin_raw = Path(path).read_bytes()
    snapshot.kernel.cubin_path = None
    snapshot.config.found_by_coordesc = found_by_coordesc
    file_key = kernel_file_key(tuner.filename)
    with _RECORDER.lock:
        results = _RECORDER.extra_results.setdefault(file_key, [])
        if all(_config_key(r.config) != _config_key(snapshot.config) for r in results):
            results.append(snapshot)
            _RECORDER.version += 1


def _cubin_location(result: Any) -> str:
    th = _heuristics()
    meta = getattr(result, "compile_meta", {}) or {}
    ext = th.GPU_KERNEL_BIN_EXTS.get(meta.get("device_type", "cuda"), ".cubin") if hasattr(th, "GPU_KERNEL_BIN_EXTS") else ".cubin"
    return os.path.join(
        th.triton_cache_dir(meta.get("device", 0) or 0),
        th.triton_hash_to_path_key(result.kernel.hash),
        f"{result.kernel.name}{ext}",
    )
