"""Make every compile entry point raise, to prove a warm process compiled nothing.

Installed in the *warm* process before the first torch.compile call.  The same list trips
on a plain Inductor compile (tests check that too), so the check can fail.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
import traceback
from typing import Any

CALLS: list[str] = []
STACKS: list[str] = []  # where each trip came from, for the failure message


class TripwireError(RuntimeError):
    pass


def _trip(name: str) -> Any:
    def tripped(*args: Any, **kwargs: Any) -> Any:
        CALLS.append(name)
        STACKS.append(f"{name}:\n" + "".join(traceback.format_stack(limit=16)[:-1]))
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
    ("torch._inductor.compile_fx", "fw_compiler_freezing"),
    ("torch._inductor.freezing", "freeze"),
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


# Inductor's compiler: a warm start that loads from artcache imports none of these (outside
# the CUDA-graph modes, reduce-overhead and max-autotune, whose post-compile imports
# compile_fx; see artcache/_lean_load.py).  ir, scheduler and decomposition: a hit imported
# them through torch._inductor.debug and a by-name reference (DeferredCallable) until stop 10.
COMPILER_MODULES = (
    "torch._inductor.compile_fx",
    "torch._inductor.graph",
    "torch._inductor.lowering",
    "torch._inductor.select_algorithm",
    "torch._inductor.ir",
    "torch._inductor.scheduler",
    "torch._inductor.debug",
    "torch._inductor.decomposition",
)


def compiler_modules_imported() -> list[str]:
    return [name for name in COMPILER_MODULES if name in sys.modules]


def install(*, forbid_subprocess: bool = True) -> list[str]:
    """Patch every target: now where its module is imported, else the moment it is.

    Importing nothing itself matters: the warm path's claim is also about what it does not
    import (Inductor's compiler), so the tripwires must leave the import state alone.
    Returns the targets patched now and those armed for their module's import (a name
    that this torch lacks is skipped when its module imports)."""
    pending: dict[str, list[str]] = {}
    patched = []
    for module_name, path in TARGETS:
        if module_name in sys.modules:
            if _patch(sys.modules[module_name], module_name, path):
                patched.append(f"{module_name}.{path}")
        else:
            pending.setdefault(module_name, []).append(path)
            patched.append(f"{module_name}.{path}")
    if pending:
        sys.meta_path.insert(0, _PatchOnImport(pending))
    if forbid_subprocess:
        subprocess.Popen.__init__ = _trip("subprocess.Popen")  # type: ignore[method-assign]
        os.fork = _trip("os.fork")
        patched.append("subprocess")
    return patched


def _patch(module: Any, module_name: str, path: str) -> bool:
    owner = module
    *parents, attr = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent, None)
    if owner is None or not hasattr(owner, attr):
        return False
    setattr(owner, attr, _trip(f"{module_name}.{path}"))
    return True


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a target module so that its
    tripwires go in right after the module body ran."""

    def __init__(self, pending: dict[str, list[str]]) -> None:
        self.pending = pending
        self.resolving: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        # Another finder of this kind may ask every finder too: answer nothing while asking.
        if name not in self.pending or name in self.resolving:
            return None
        self.resolving.add(name)
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None) if finder is not self else None
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    break
        finally:
            self.resolving.discard(name)
        if spec is None or spec.loader is None:
            return spec
        paths, loader = self.pending[name], spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            for attr_path in paths:
                _patch(module, name, attr_path)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def arm_tracer(armed: Any) -> None:
    """Make Dynamo's bytecode tracer (the instruction translator that traces a frame)
    raise whenever ``armed()`` is true: a precompiled hit must not trace the frame.
    Imports Dynamo (the precompile tier's hit path imports it anyway)."""
    from torch._dynamo import symbolic_convert

    original = symbolic_convert.InstructionTranslator.run

    def run(self: Any) -> Any:
        if armed():
            CALLS.append("InstructionTranslator.run")
            STACKS.append("InstructionTranslator.run:\n" + "".join(traceback.format_stack(limit=16)[:-1]))
            raise TripwireError("tripwire: Dynamo traced a frame in the warm process")
        return original(self)

    symbolic_convert.InstructionTranslator.run = run  # type: ignore[method-assign]



def armed_in(phase: str) -> list[bool]:
    """For a cold/warm test program: in its ``warm`` phase, every compile entry point
    tripwired (:func:`install`) and Dynamo's tracer too while the returned flag's one item
    is true (a program sets it false before a call that must trace).  Nothing in any other
    phase."""
    armed = [phase == "warm"]
    if armed[0]:
        install(forbid_subprocess=False)
        arm_tracer(lambda: armed[0])
    return armed
