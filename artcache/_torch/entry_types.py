"""The classes a captured entry may contain, as an allowlist for artcache's pickler."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import Any

from ..errors import CorruptEntryError, Uncacheable
from ..pickler import default_allowlist
from .patching import find
from .triton_codec import register_triton_classes


# Classes of a BundledAOTAutogradResult's object graph (found by walking captured entries
# of inference, training, aliasing, mutation, graph-break and dynamic-shape programs).
# Looked up by name so that a class a torch version lacks is simply not allowed.
_ENTRY_CLASSES = (
    ("torch._functorch._aot_autograd.aot_autograd_result", "BundledAOTAutogradResult"),
    ("torch._functorch._aot_autograd.aot_autograd_result", "BundledCompiledForward"),
    ("torch._functorch._aot_autograd.aot_autograd_result", "BundledCompiledBackward"),
    ("torch._functorch._aot_autograd.aot_autograd_result", "SerializedGraphModule"),
    ("torch._functorch._aot_autograd.schemas", "ViewAndMutationMeta"),
    ("torch._functorch._aot_autograd.schemas", "InputAliasInfo"),
    ("torch._functorch._aot_autograd.schemas", "OutputAliasInfo"),
    ("torch._functorch._aot_autograd.schemas", "PlainTensorMeta"),
    ("torch._functorch._aot_autograd.schemas", "MemoryFormatMeta"),
    ("torch._functorch._aot_autograd.schemas", "CacheableAOTConfig"),
    # torch 2.11 stores the sanitized AOTConfig itself (compilers and decompositions
    # emptied); 2.13 stores a CacheableAOTConfig instead.
    ("torch._functorch._aot_autograd.schemas", "AOTConfig"),
    ("torch._functorch._aot_autograd.schemas", "MutationType"),
    ("torch._functorch._aot_autograd.schemas", "OutputType"),
    ("torch._functorch._aot_autograd.schemas", "SubclassCreationMeta"),
    ("torch._functorch._aot_autograd.descriptors", "PlainAOTOutput"),
    ("torch._functorch._aot_autograd.descriptors", "PlainAOTInput"),
    ("torch._functorch._aot_autograd.descriptors", "TangentAOTInput"),
    ("torch._functorch._aot_autograd.descriptors", "ParamAOTInput"),
    ("torch._functorch._aot_autograd.descriptors", "BufferAOTInput"),
    ("torch._functorch._aot_autograd.descriptors", "InputMutationAOTOutput"),
    ("torch._functorch._aot_autograd.descriptors", "GradAOTOutput"),
    ("torch._functorch._aot_autograd.descriptors", "SavedForBackwardsAOTOutput"),
    ("torch._functorch._aot_autograd.descriptors", "IntermediateBaseAOTOutput"),
    ("torch._functorch._aot_autograd.descriptors", "AliasedArgWithMetadataMutationAOTOutput"),
    ("torch._functorch._aot_autograd.descriptors", "SyntheticBaseAOTInput"),
    ("torch._functorch._aot_autograd.descriptors", "ViewBaseAOTInput"),
    ("torch._functorch._aot_autograd.runtime_wrappers", "AOTDedupeWrapper"),
    ("torch._functorch._aot_autograd.runtime_wrappers", "AOTSyntheticBaseWrapper"),
    ("torch._functorch._aot_autograd.functional_utils", "ViewMetaSequence"),
    ("torch._functorch._aot_autograd.functional_utils", "MetadataKey"),
    ("torch._inductor.output_code", "CompiledFxGraph"),
    ("torch._inductor.output_code", "CompiledAOTI"),
    ("torch._inductor.triton_bundler", "TritonBundle"),
    ("torch._inductor.triton_bundler", "TritonKernelArtifacts"),
    ("torch._inductor.triton_bundler", "TritonKernelArtifact"),
    ("torch._inductor.metrics", "CachedMetricsDeltas"),
    ("torch._inductor.utils", "BoxedBool"),
    ("torch._inductor.cudagraph_utils", "BoxedDeviceIndex"),
    ("torch._inductor.cudagraph_utils", "CudagraphCachedInfo"),
    ("torch._inductor.cudagraph_utils", "PlaceholderInfo"),
    ("torch._inductor.cudagraph_utils", "WrappedFunction"),
    # Graph partitions (CUDA graphs around partitions; "reduce-overhead", "max-autotune").
    ("torch._inductor.utils", "GraphPartitionMap"),
    ("torch.fx.experimental.symbolic_shapes", "SymIntEqByExpr"),
    ("torch._dynamo.source", "LocalSource"),
    ("torch._dynamo.source", "AttrSource"),
    ("torch._dynamo.source", "GetItemSource"),
    ("torch._dynamo.source", "DictGetItemSource"),
    ("torch._dynamo.source", "GlobalSource"),
    ("torch._dynamo.source", "TensorPropertySource"),
    ("torch._dynamo.source", "TensorProperty"),
    ("torch._dynamo.source", "UnspecializedNNModuleSource"),
    ("torch._dynamo.source", "UnspecializedBuiltinNNModuleSource"),
    ("torch._dynamo.source", "UnspecializedParamBufferSource"),
    ("torch._dynamo.source", "NNModuleSource"),
    ("torch._dynamo.source", "ParamBufferSource"),
    ("torch._dynamo.source", "ConstantSource"),
    ("torch._dynamo.source", "RandomValueSource"),
    ("torch._dynamo.source", "ShapeEnvSource"),
    ("torch._dynamo.source", "GradSource"),
    ("torch._dynamo.source", "OptimizerSource"),
    ("torch._dynamo.source", "ConstDictKeySource"),
    ("torch._guards", "GuardSource"),
)
# Classes referenced as values (``OutputAliasInfo.raw_type``, ``output_types``) and
# functions referenced by name (``fx_kwargs["get_decomp_fn"]``).
_ENTRY_CALLABLES = (
    # vmap inside a compiled region: Dynamo/AOT graphs call these to enter and leave it.
    ("torch._functorch.predispatch", "_add_batch_dim"),
    ("torch._functorch.predispatch", "_remove_batch_dim"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch._subclasses.functional_tensor", "FunctionalTensor"),
)
# Named by ``fx_kwargs["get_decomp_fn"]``, which only compile_fx calls (a hit never does):
# deferred, so a hit does not import torch._inductor.decomposition (a slow import).
_DEFERRED_CALLABLES = (("torch._inductor.decomposition", "select_decomp_table"),)


def _strategy(cls: type) -> str:
    """Restore instance state the way pickle does (torch's own cache pickles these): the
    whole ``__dict__``, so attributes derived in ``__post_init__`` (e.g. on
    ViewAndMutationMeta) come back without running it.  Slotted and enum classes have no
    ``__dict__``: fields and values are their state."""
    if issubclass(cls, enum.Enum):
        return "enum"
    if any("__slots__" in vars(k) for k in cls.__mro__ if k is not object) and dataclasses.is_dataclass(cls):
        return "dataclass"
    return "dict"


def _register_view_metas(allow: Any) -> None:
    """Functionalization ViewMeta records (outputs that alias inputs replay their views).

    They are pybind11 classes, one per view op, pickled by torch as a tuple of flags, ints,
    int lists and an InverseReturnMode (:func:`_plain_view_state`); we store exactly that
    state and rebuild through the class's own ``__setstate__``, accepting those types only.
    """
    try:
        from torch._C import _functionalization as functionalization
    except ImportError:
        return
    mode_cls = getattr(functionalization, "InverseReturnMode", None)
    if mode_cls is None:
        return
    allow.register(mode_cls, "custom", encode=int, decode=lambda v: _view_mode(mode_cls, v))
    for name in dir(functionalization):
        cls = getattr(functionalization, name)
        if name.endswith("ViewMeta") and isinstance(cls, type) and hasattr(cls, "__setstate__"):
            allow.register(cls, "custom", encode=functools.partial(_view_meta_state, mode_cls=mode_cls),
                           decode=_view_meta_builder(cls, mode_cls))


def _view_mode(mode_cls: type, value: Any) -> Any:
    if type(value) is not int or value not in {int(m) for m in mode_cls.__members__.values()}:  # type: ignore[attr-defined]
        raise CorruptEntryError(f"bad InverseReturnMode {value!r}")
    return mode_cls(value)


def _plain_view_state(state: Any, mode_cls: type) -> bool:
    """A ViewMeta state holds flags (bool), an output index and view arguments (int, or a
    list of ints) and the InverseReturnMode, in an order that depends on the view op:
    ``(has_symbolic_inputs, is_multi_output, mode, *args)``, with ``out_index`` after the
    first flag for the ops with several outputs (split, chunk, unbind) and trailing
    flags for some (expand's ``implicit``); an optional argument left out is None
    (as_strided's ``storage_offset``)."""
    return all(
        v is None or type(v) in (bool, int) or isinstance(v, mode_cls) or (type(v) is list and all(type(i) is int for i in v))
        for v in state
    )


def _view_meta_state(meta: Any, mode_cls: type) -> list[Any]:
    state = [list(v) if isinstance(v, tuple) else v for v in meta.__getstate__()]
    if not _plain_view_state(state, mode_cls):
        raise Uncacheable("symbolic-view", "an aliased output is a view with symbolic arguments")
    return state


def _view_meta_builder(cls: type, mode_cls: type) -> Callable[[Any], Any]:
    def build(state: Any) -> Any:
        if not (type(state) is list and _plain_view_state(state, mode_cls)):
            raise CorruptEntryError(f"bad {cls.__name__} state")
        meta = cls.__new__(cls)  # type: ignore[call-overload]
        try:
            meta.__setstate__(tuple(state))
        except (TypeError, RuntimeError) as exc:  # pybind rejects a state of the wrong shape
            raise CorruptEntryError(f"bad {cls.__name__} state: {exc}") from exc
        return meta

    return build


def _counter(state: Any) -> collections.Counter[Any]:
    if type(state) is not dict:
        raise CorruptEntryError("a Counter's state must be a dict")
    return collections.Counter(state)


def entry_allowlist() -> Any:
    """The pickler allowlist for captured entries: the default one plus the classes above.

    Built per call (cheap) and owned by the caller, so no module-level registry exists.
    """
    allow = default_allowlist().copy()
    for module, name in _ENTRY_CLASSES:
        cls = find(module, name)
        if isinstance(cls, type):
            allow.register(cls, _strategy(cls))
    _register_view_metas(allow)
    # GPU entries: Triton kernel bundles (static launchers, configs); a no-op without Triton.
    register_triton_classes(allow)
    # Counter (CompiledFxGraph.counter_deltas) is a dict subclass: rebuilt from a plain dict.
    allow.register(collections.Counter, "custom", encode=dict, decode=_counter)
    for module, name in _ENTRY_CALLABLES:
        obj = find(module, name)
        if obj is not None:
            allow.register_callable(obj, f"{module}:{name}")
    for module, name in _DEFERRED_CALLABLES:
        allow.register_deferred_callable(module, name)
    return allow.freeze()
