"""Triton kernel objects in artcache's allowlisted pickler (GPU entries).

With ``bundle_triton_into_fx_graph_cache`` each ``CompiledFxGraph`` carries a
``TritonBundle`` whose statically launchable kernels are pickled ``CachingAutotuner``s
holding ``StaticTritonCompileResult``s.  torch stores those with ``pickle``; artcache stores
them through its own pickler, so each class is registered here with the state its own
``__getstate__``/``__setstate__`` define, and every decoded state is checked before an
object is built.  Classes are looked up by name: one a torch/Triton version lacks is
simply not allowed.  Verified on torch 2.11 + Triton 3.6 (H100); on a CPU-only torch
nothing here is registered.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .triton_serve import triton_available
from ..errors import CorruptEntryError, Uncacheable
from ..pickler.allowlist import check_instance_state

# Function metadata JITFunction copies from the kernel's function (strings, or None once
# prepare_for_pickle cleared __globals__): the only dunder names its state may hold.
_JIT_DUNDERS = frozenset({"__globals__", "__doc__", "__name__", "__qualname__", "__module__"})


def _new_with_state(cls: type, state: Any, setstate: Callable[[Any, Any], None] | None,
                    typed_callables: Mapping[str, type] | None = None) -> Any:
    if type(state) is not dict or not all(type(k) is str for k in state):
        raise CorruptEntryError(f"bad {cls.__name__} state")
    metadata = {k for k, v in state.items() if k in _JIT_DUNDERS and (v is None or type(v) is str)}
    # The pickler's rules for restored state: plain names, no method shadowed, callables
    # only under declared attributes (no protocol hook such as sympy's _sympy_ planted).
    check_instance_state(cls, {k: v for k, v in state.items() if k not in metadata}, typed_callables)
    obj = object.__new__(cls)
    if setstate is not None:
        setstate(obj, state)
    else:
        obj.__dict__.update(state)
    return obj


def _getstate_codec(cls: type, *, use_setstate: bool,
                    typed_callables: Mapping[str, type] | None = None) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Store what the class's own ``__getstate__`` returns (what torch's pickle stores);
    rebuild with ``object.__new__`` and its ``__setstate__`` (or a ``__dict__`` update)."""
    setstate = cls.__dict__.get("__setstate__") if use_setstate else None

    def encode(obj: Any) -> Any:
        # Values of cached properties (e.g. the static launcher's C_impl, a torch._C class)
        # are derived, not state: the rebuilt object computes them again.
        return {k: v for k, v in obj.__getstate__().items() if not isinstance(getattr(cls, k, None), functools.cached_property)}

    def decode(state: Any) -> Any:
        return _new_with_state(cls, state, setstate, typed_callables)

    return encode, decode


def _caching_autotuner_encode(obj: Any) -> dict[str, Any]:
    state = dict(obj.__getstate__())
    # A bound AutotuneCache.save: only used to write winners after tuning, which a hit
    # does not do (and artcache keeps winners itself).
    state["save_cache_hook"] = None
    # Reloads the kernel from source (a compile); torch's bundler already clears it.
    state["_reload_kernel"] = None
    return state


# JITFunction state that must be empty once CachingAutotuner.prepare_for_pickle ran (it
# drops the Python function, its globals and the hash lock): the kernel is never re-jitted.
_JIT_CLEARED = ("fn", "__globals__", "used_global_vals", "_hash_lock", "kernel")


def _jit_encode(obj: Any) -> dict[str, Any]:
    state = dict(vars(obj))
    # Per-device caches of kernels jitted through JITFunction.run; Inductor launches its
    # own compiled binaries, so they are empty and rebuilt empty.
    caches = state.pop("device_caches", None)
    if caches:
        raise Uncacheable("triton-jit-cache", f"{obj.__name__} holds jitted kernels")
    for name in _JIT_CLEARED:
        if state.get(name) is not None:
            raise Uncacheable("triton-jit-state", f"{obj.__name__}.{name} was not cleared for pickling")
    return state


def _jit_decoder(cls: type, const_repr: type | None) -> Callable[[Any], Any]:
    def decode(state: Any) -> Any:
        if type(state) is not dict:
            raise CorruptEntryError("bad JITFunction state")
        rep = state.pop("repr", None)
        # prepare_for_pickle replaced the repr method by a constant; nothing else may shadow one.
        if rep is not None and (const_repr is None or type(rep) is not const_repr):
            raise CorruptEntryError("bad JITFunction repr")
        obj = _new_with_state(cls, state, None)
        if rep is not None:
            obj.repr = rep
        obj.device_caches = collections.defaultdict(obj.create_binder)
        obj._hash_lock = threading.RLock()
        return obj

    return decode


def _parameter_encode(p: Any) -> list[Any]:
    return [p.name, int(p.kind), p.default, p.annotation]


def _parameter_decode(state: Any) -> Any:
    import inspect

    if type(state) is not list or len(state) != 4 or type(state[0]) is not str or type(state[1]) is not int:
        raise CorruptEntryError("bad inspect.Parameter state")
    try:
        return inspect.Parameter(state[0], inspect._ParameterKind(state[1]), default=state[2], annotation=state[3])
    except ValueError as exc:
        raise CorruptEntryError(f"bad inspect.Parameter state: {exc}") from exc


def _signature_encode(sig: Any) -> list[Any]:
    return [list(sig.parameters.values()), sig.return_annotation]


def _signature_decode(state: Any) -> Any:
    import inspect

    if type(state) is not list or len(state) != 2 or type(state[0]) is not list:
        raise CorruptEntryError("bad inspect.Signature state")
    if not all(isinstance(p, inspect.Parameter) for p in state[0]):
        raise CorruptEntryError("bad inspect.Signature parameters")
    try:
        return inspect.Signature(state[0], return_annotation=state[1])
    except (ValueError, TypeError) as exc:
        raise CorruptEntryError(f"bad inspect.Signature state: {exc}") from exc


# (module, class, strategy) for the kernel objects of a TritonBundle; "getstate" means the
# class's __getstate__/__setstate__ define its state.  Looked up by name so that a class a
# torch/Triton version lacks is simply not allowed.
_HEURISTICS = "torch._inductor.runtime.triton_heuristics"
_HINT = "a kernel heuristic's enum (CachingAutotuner state)"
_TRITON_CLASSES: tuple[tuple[str, str, str, str], ...] = (
    ("torch._inductor.triton_bundler", "StaticallyLaunchedAutotuner", "dataclass", "a statically launched kernel"),
    (_HEURISTICS, "StaticTritonCompileResult", "dict", "a compiled kernel with its static launcher"),
    (_HEURISTICS, "InductorConfig", "dict", "a kernel's Inductor settings"),
    (_HEURISTICS, "_ConstRepr", "dict", "the constant repr prepare_for_pickle leaves on a JITFunction"),
    ("torch._inductor.runtime.static_triton_launcher", "StaticallyLaunchedCudaKernel", "getstate-dict",
     "a cubin and its launch metadata"),
    ("torch._inductor.runtime.hints", "DeviceProperties", "namedtuple", "the GPU a kernel was built for"),
    ("torch._inductor.runtime.hints", "HeuristicType", "enum", _HINT),
    ("torch._inductor.runtime.hints", "ReductionHint", "enum", _HINT),
    ("torch._inductor.runtime.hints", "TileHint", "enum", _HINT),
    ("torch._inductor.runtime.hints", "AutotuneHint", "enum", _HINT),
    ("torch._inductor.runtime.coordinate_descent_tuner", "CoordescTuner", "dict", "coordinate-descent tuning state"),
    ("torch._guards", "CompileId", "dataclass", "which compile a kernel belongs to"),
    ("triton.runtime.autotuner", "Config", "dict", "a kernel launch config (block sizes, warps)"),
    ("triton.runtime.jit", "KernelParam", "dict", "a kernel parameter of its signature"),
)
# Values a kernel's signature refers to: the "no default/annotation" marker and the
# constexpr annotation of block-size parameters.
_TRITON_CALLABLES = (
    ("inspect", "_empty", "the no-default marker of a kernel signature"),
    ("triton.language.core", "constexpr", "the annotation of block-size parameters"),
)


def register_triton_classes(allow: Any) -> None:
    if not triton_available():
        return
    from .patching import find

    for module, name, strategy, reason in _TRITON_CLASSES:
        cls = find(module, name)
        if not isinstance(cls, type):
            continue
        if strategy == "getstate-dict":
            encode, decode = _getstate_codec(cls, use_setstate=False)
            allow.register(cls, "custom", encode=encode, decode=decode, reason=reason)
        elif strategy == "dict" and cls.__new__ is not object.__new__:
            continue
        else:
            allow.register(cls, strategy, reason=reason)
    tuner = find("torch._inductor.runtime.triton_heuristics", "CachingAutotuner")
    jit = find("triton.runtime.jit", "JITFunction")
    if isinstance(tuner, type):
        # The tuner's kernel function, assigned in __init__ without an annotation: only a
        # JITFunction (decoded by its own codec below, its function and globals cleared).
        _, decode = _getstate_codec(tuner, use_setstate=True,
                                    typed_callables={"fn": jit} if isinstance(jit, type) else None)
        allow.register(tuner, "custom", encode=_caching_autotuner_encode, decode=decode,
                       reason="a kernel with its configs, as torch's TritonBundle pickles it")
    if isinstance(jit, type):
        const_repr = find("torch._inductor.runtime.triton_heuristics", "_ConstRepr")
        allow.register(jit, "custom", encode=_jit_encode, decode=_jit_decoder(jit, const_repr),
                       reason="a kernel's JITFunction, its function and globals cleared")
    import inspect

    allow.register(inspect.Parameter, "custom", encode=_parameter_encode, decode=_parameter_decode,
                   reason="a parameter of a kernel signature")
    allow.register(inspect.Signature, "custom", encode=_signature_encode, decode=_signature_decode,
                   reason="a kernel's signature (JITFunction)")
    for module, name, reason in _TRITON_CALLABLES:
        obj = find(module, name)
        if obj is not None:
            allow.register_callable(obj, reason=reason)
