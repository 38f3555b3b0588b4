"""Make every compile entry point raise, to prove a warm process compiled nothing.

Installed in the *warm* process before the first torch.compile call.  The same list trips
on a plain Inductor compile (tests check that too), so the check can fail.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

CALLS: list[str] = []


class TripwireError(RuntimeError):
    pass


def _trip(name: str) -> Any:
    def tripped(*args: Any, **kwargs: Any) -> Any:
        CALLS.append(name)
        raise TripwireError(f"tripwire: {name} ran in the warm process")

    # Some targets are functools caches that torch clears on reset; clearing is harmless.
    tripped.cache_clear = lambda: None  # type: ignore[attr-defined]
    return tripped


# (module, attribute path): AOTAutograd tracing, Inductor lowering/codegen, C++ builds,
# the vec-ISA probe, torch's own cache keys (they hash torch's sources), Triton compiles
# and autotuning.  Absent names (other torch versions) are skipped.
TARGETS = [
    ("torch._inductor.compile_fx", "compile_fx"),
    ("torch._inductor.compile_fx", "compile_fx_inner"),
    ("torch._inductor.compile_fx", "_compile_fx_inner"),
    ("torch._inductor.compile_fx", "fx_codegen_and_compile"),
    ("torch._functorch.aot_autograd", "aot_module_simplified"),
    ("torch._functorch.aot_autograd", "create_aot_state"),
    ("torch._functorch._aot_autograd.graph_compile", "aot_stage1_graph_capture"),
    ("torch._functorch._aot_autograd.graph_compile", "aot_stage2_compile"),
    ("torch._inductor.graph", "GraphLowering.codegen"),
    ("torch._inductor.graph", "GraphLowering.compile_to_module"),
    ("torch._inductor.codecache", "CppCodeCache.load_async"),
    ("torch._inductor.codecache", "_precompile_header"),
    ("torch._inductor.codecache", "torch_key"),
    ("torch._inductor.codecache", "FxGraphCache.prepare_key"),
    ("torch._inductor.cpp_builder", "CppBuilder.build"),
    ("torch._inductor.cpu_vec_isa", "pick_vec_isa"),
    ("torch._functorch._aot_autograd.autograd_cache", "AOTAutogradCache.try_load"),
    ("torch._functorch._aot_autograd.autograd_cache", "autograd_cache_key"),
    ("torch._inductor.select_algorithm", "AlgorithmSelectorCache.benchmark_example_value"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner.benchmark_all_configs"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner._precompile_config"),
    ("torch._inductor.async_compile", "AsyncCompile.process_pool"),
    ("triton", "compile"),
]


def install(*, forbid_subprocess: bool = True) -> list[str]:
    """Patch every target; return the names patched."""
    import importlib

    patched = []
    for module_name, path in TARGETS:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, attr = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is None or not hasattr(owner, attr):
            continue
        setattr(owner, attr, _trip(f"{module_name}.{path}"))
        patched.append(f"{module_name}.{path}")
    if forbid_subprocess:
        subprocess.Popen.__init__ = _trip("subprocess.Popen")  # type: ignore[method-assign]
        os.fork = _trip("os.fork")
        patched.append("subprocess")
    return patched
