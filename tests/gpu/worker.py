"""One side (cold or warm) of a GPU warm-start case, run in its own fresh process.

    python -m tests.gpu.worker CASE ROLE OUT_DIR

The store comes from ``ARTCACHE_STORE``.  The warm role installs the tripwires (the
project's list plus the GPU ones below) before anything compiles.  Prints one JSON line
(prefixed ``RESULT ``) and saves outputs/grads to ``OUT_DIR/<case>-<role>.pt``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()

import torch  # noqa: E402

# Warm-path tripwires beyond tests/_tripwire.py: everything that compiles a Triton kernel,
# loads one from source, or tunes (Inductor's template selection, the per-kernel
# autotuner and coordinate descent), and the autotune cache key that hashes torch's sources.
GPU_TARGETS = [
    ("triton.compiler.compiler", "compile"),
    ("torch._inductor.async_compile", "_load_triton_kernel_from_source"),
    ("torch._inductor.select_algorithm", "AlgorithmSelectorCache.__call__"),
    ("torch._inductor.select_algorithm", "AlgorithmSelectorCache.benchmark_example_value"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner.autotune_to_one_config"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner.bench"),
    ("torch._inductor.runtime.coordinate_descent_tuner", "CoordescTuner.autotune"),
    ("torch._inductor.runtime.autotune_cache", "AutotuneCache._make_local_cache_key"),
    ("torch._inductor.runtime.autotune_cache", "AutotuneCache.save"),
]
# Triton kernel generation and assembly: what a lookup in Triton's own file cache never
# runs.  The only tripwires on the "nonstatic" case's Triton path, where torch rebuilds
# kernels through triton.compile (which must then be a cache hit on the entry's files).
CODEGEN_TARGETS = [
    ("triton.compiler.compiler", "ASTSource.make_ir"),
    ("triton.compiler.code_generator", "ast_to_ttir"),
    ("triton.backends.nvidia.compiler", "CUDABackend.make_ttir"),
    ("triton.backends.nvidia.compiler", "CUDABackend.make_ttgir"),
    ("triton.backends.nvidia.compiler", "CUDABackend.make_llir"),
    ("triton.backends.nvidia.compiler", "CUDABackend.make_ptx"),
    ("triton.backends.nvidia.compiler", "CUDABackend.make_cubin"),
]
# AsyncCompile.triton keys its in-memory kernel table with code_hash(source,
# extra=torch_key()); artcache answers that key from the entry for the kernels whose stored
# static launcher names their source (_triton_compat.static_bundle_keys), and torch computes
# it otherwise: for kernels without a static launcher ("nonstatic"), and under max-autotune,
# where some kernel's source had no stored key (a template kernel, H100 and H200; not
# investigated: likely one whose launcher was filed from its benchmarking module).
TORCH_KEY = ("torch._inductor.codecache", "torch_key")
TORCH_KEY_ALLOWED = {"nonstatic", "max_autotune", "pc_max_autotune", "pcc_max_autotune"}
# Allowed on the "nonstatic" case only: torch loads those kernels from their source and
# calls triton.compile (a cache hit), and Triton builds its C launcher stub with gcc.
NONSTATIC_ALLOWED = {
    ("triton", "compile"),
    ("triton.compiler.compiler", "compile"),
    ("torch._inductor.async_compile", "_load_triton_kernel_from_source"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner._precompile_config"),
}

CASES: dict[str, dict[str, Any]] = {
    "infer": {"mode": None, "train": False},
    "train": {"mode": None, "train": True},
    "max_autotune": {"mode": "max-autotune", "train": False},
    "reduce_overhead": {"mode": "reduce-overhead", "train": False},
    "dynamic": {"mode": None, "train": False, "dynamic": True},
    # Every kernel without torch's static launcher (TritonCompileResult), as happens to
    # kernels the static launcher does not support.
    "nonstatic": {"mode": None, "train": False, "options": {"use_static_triton_launcher": False}},
    # A kernel whose name Triton cuts in its file names, so torch's static-launch check
    # misses its cubin: the warm process must still load it without triton.compile.
    "long_names": {"mode": None, "train": False, "model": "long_names"},
    # A single-config reduction kernel that torch's _dynamic_scale_rblock gives a second,
    # smaller-block candidate at compile time; the cold first run benchmarks the two.  The
    # warm process must come up with the cold one's choice, compiling and benchmarking
    # nothing (tripwired: triton.compile, autotune_to_one_config, bench).
    "rblock_scale": {"mode": None, "train": True, "model": "vocab_loss"},
    # Inductor's freezing (inference under no_grad): weights compiled in as constants,
    # batch norm folded into convolutions, weights re-laid-out; the entry holds them.
    "frozen_resnet50": {"mode": None, "train": False, "model": "resnet50", "freezing": True},
    "frozen_gpt2": {"mode": None, "train": False, "model": "gpt2", "freezing": True},
    # The precompile tier (artcache.precompile): the warm process must not trace the frame
    # either (Dynamo's instruction translator is tripwired there).
    "pc_infer": {"mode": None, "train": False, "precompile": True},
    "pc_train": {"mode": None, "train": True, "precompile": True},
    "pc_max_autotune": {"mode": "max-autotune", "train": False, "precompile": True},
    "pc_reduce_overhead": {"mode": "reduce-overhead", "train": False, "precompile": True},
    # The same tier through torch.compile (a backend object with precompile on): the
    # CUDA-graph modes wrap the replayed graph under Dynamo's own compiled context.
    "pcc_max_autotune": {"mode": "max-autotune", "train": False, "precompile": "compile"},
    "pcc_reduce_overhead": {"mode": "reduce-overhead", "train": False, "precompile": "compile"},
}


def _replayed(case: dict[str, Any], compiled: Any) -> int | None:
    """Calls the precompile tier served: the wrapper's count, or its hooks' through torch.compile."""
    if case.get("precompile") == "compile":
        from artcache import frame_hook

        return sum(h.replayed for h in frame_hook.attached())
    return getattr(compiled, "replayed", None)


def _precompile_reasons(case: dict[str, Any], compiled: Any) -> dict[str, int]:
    """Why calls went through Dynamo (the wrapper's, or its hooks' through torch.compile)."""
    if case.get("precompile") == "compile":
        from artcache import frame_hook

        found: dict[str, int] = {}
        for hook in frame_hook.attached():
            for reason, n in hook.reasons.items():
                found[reason] = found.get(reason, 0) + n
        return found
    return dict(getattr(compiled, "reasons", {}) or {})


def _files(path: str | None) -> list[str]:
    if not path or not os.path.isdir(path):
        return []
    return sorted(str(Path(r, f).relative_to(path)) for r, _, fs in os.walk(path) for f in fs)


def main() -> None:
    case_name, role, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    case = CASES[case_name]
    patched: list[str] = []
    if role == "warm":
        from tests import _tripwire

        nonstatic = case_name == "nonstatic"
        _tripwire.TARGETS.extend(t for t in GPU_TARGETS + CODEGEN_TARGETS if t not in _tripwire.TARGETS)
        allowed = (NONSTATIC_ALLOWED if nonstatic else set()) | ({TORCH_KEY} if case_name in TORCH_KEY_ALLOWED else set())
        _tripwire.TARGETS[:] = [t for t in _tripwire.TARGETS if t not in allowed]
        patched = _tripwire.install(forbid_subprocess=not nonstatic)
        if case.get("precompile"):
            _tripwire.arm_tracer(lambda: True)
        _explain_trips()

    _watch_compiler_imports()

    import logging

    import artcache
    from tests.gpu import models

    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage()[:600])

    logging.getLogger("artcache").addHandler(_Keep(logging.DEBUG))
    logging.getLogger("artcache").setLevel(logging.INFO)
    # Why a hit's wrapper keeps its compiler imports (the lean load's reasons, at DEBUG).
    for name in ("artcache.output_code", "artcache._torch.lean_load"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    # torch logs each reduction block _dynamic_scale_rblock halves (at DEBUG).
    scaled: list[str] = []

    class _Scaled(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Dynamically scale down"):
                scaled.append(record.getMessage()[:300])

    heuristics_log = logging.getLogger("torch._inductor.runtime.triton_heuristics")
    heuristics_log.addHandler(_Scaled(logging.DEBUG))
    heuristics_log.setLevel(logging.DEBUG)

    if case.get("freezing"):
        torch._inductor.config.freezing = True
    cache = artcache.Cache()
    model = models.make(model=case.get("model", "net"))
    if case.get("precompile") == "compile":
        compiled: Any = torch.compile(model, backend=cache.backend(
            mode=case["mode"], options={**(case.get("options") or {}), "precompile": True}))
    elif case.get("precompile"):
        compiled = artcache.precompile(model, cache=cache, mode=case["mode"], options=case.get("options"))
    else:
        compiled = torch.compile(model, backend=cache.backend(mode=case["mode"], options=case.get("options")))

    if case.get("dynamic"):
        sizes = [32, 48] if role == "cold" else [48, 80]
    elif case["mode"] == "reduce-overhead":
        sizes = [64] * 5
    else:
        sizes = [64, 64, 64]

    outs: dict[str, torch.Tensor] = {}
    eager_err = 0.0
    eager_max = 0.0
    first_call_s = None
    call_s = []
    for i, n in enumerate(sizes):
        x = models.inputs(n, seed=10 + i if case["mode"] == "reduce-overhead" else 1 + n, model=case.get("model", "net"))
        if case.get("dynamic") and i == 0:
            torch._dynamo.mark_dynamic(x, 0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        if case["train"]:
            model.zero_grad(set_to_none=True)
            out = compiled(x)
            out.float().pow(2).sum().backward()
        else:
            with torch.no_grad():
                out = compiled(x)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        call_s.append(round(elapsed, 4))
        if first_call_s is None:
            first_call_s = elapsed
        # Dynamic: keyed by size (the warm process runs a size the cold one did not).
        outs[f"out_n{n}" if case.get("dynamic") else f"out{i}_n{n}"] = out.detach().clone()
        if case["train"]:
            for name, p in model.named_parameters():
                outs[f"grad{i}_{name}"] = p.grad.detach().clone()
        with torch.no_grad():
            expected = model(x)
        eager_err = max(eager_err, float((out.detach() - expected).abs().max()))
        eager_max = max(eager_max, float(expected.abs().max()))

    stats = cache.stats()
    from tests import _tripwire

    # Before _cudagraph_info below, which imports cudagraph_trees (and with it compile_fx).
    compiler_imported = _tripwire.compiler_modules_imported()

    result: dict[str, Any] = {
        "case": case_name,
        "role": role,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "first_call_s": round(first_call_s or 0.0, 3),
        "call_s": call_s,
        "process_s": round(time.perf_counter() - T0, 3),
        "max_abs_err_vs_eager": eager_err,
        "max_abs_eager": eager_max,
        "hits": stats.hits,
        "misses": dict(stats.misses),
        "saves": stats.saves,
        "uncacheable": dict(stats.uncacheable),
        "errors": dict(stats.errors),
        "tripwires_patched": len(patched),
        "tripwires": patched,
        "tripwires_tripped": list(_tripwire.CALLS),
        "tripwire_stacks": _tripwire.STACKS[:3],
        "compiler_modules_imported": compiler_imported,
        "compiler_first_import": COMPILER_IMPORT[:1],
        "triton_cache_dir_files": _files(os.environ.get("TRITON_CACHE_DIR")),
        "inductor_counters": {k: v for k, v in torch._dynamo.utils.counters["inductor"].items()},
        "cudagraph": _cudagraph_info(),
        "log": messages[-20:],
        "replayed": _replayed(case, compiled),
        "precompile_reasons": _precompile_reasons(case, compiled),
        "rblock_scaled": scaled,
        "trip_details": TRIP_DETAILS[:40],
    }
    torch.save(outs, out_dir / f"{case_name}-{role}.pt")
    for line in TRIP_DETAILS[:6]:
        print(line, file=sys.stderr)
    print("RESULT " + json.dumps(result, default=str), flush=True)


TRIP_DETAILS: list[str] = []
COMPILER_IMPORT: list[str] = []  # where the first compiler import came from (_watch_compiler_imports)


def _watch_compiler_imports() -> None:
    """Record where Inductor's compiler is first imported from (a warm hit should not)."""
    import importlib.abc
    import traceback

    from tests import _tripwire

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            if name in _tripwire.COMPILER_MODULES and not COMPILER_IMPORT:
                COMPILER_IMPORT.append(f"{name}:\n" + "".join(traceback.format_stack(limit=40)[:-1]))

    sys.meta_path.insert(0, Watch())


def _explain_trips() -> None:
    """Wrap two tripwires so a trip says what it was for (kernel name, caller stack)."""
    import subprocess
    import traceback

    from torch._inductor import async_compile

    load = async_compile._load_triton_kernel_from_source

    def load_from_source(kernel_name: str, *args: Any, **kwargs: Any) -> Any:
        TRIP_DETAILS.append(f"kernel loaded from source: {kernel_name}")
        return load(kernel_name, *args, **kwargs)

    async_compile._load_triton_kernel_from_source = load_from_source
    popen = subprocess.Popen.__init__

    def popen_init(self: Any, *args: Any, **kwargs: Any) -> Any:
        stack = "".join(traceback.format_stack(limit=40)[:-1])
        TRIP_DETAILS.append(f"subprocess {args[:1]!r}:\n{stack}")
        return popen(self, *args, **kwargs)

    subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]


def _triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except ImportError:
        return "absent"


def _cudagraph_info() -> dict[str, Any]:
    from torch._inductor import cudagraph_trees

    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    if manager is None:
        return {"tree_manager": False}
    roots = getattr(manager, "roots", None) or {}
    nodes = sum(len(v) for v in roots.values())
    return {
        "tree_manager": True,
        "root_nodes": nodes,
        "graphs_recorded": next(manager.graph_counter) if hasattr(manager, "graph_counter") else None,
    }


if __name__ == "__main__":
    try:
        main()
    finally:
        for detail in TRIP_DETAILS[:6]:
            print("TRIP " + detail, file=sys.stderr)
