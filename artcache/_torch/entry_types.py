"""The classes a captured entry may contain, as an allowlist for artcache's pickler."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import re
from collections.abc import Callable
from typing import Any

from ..errors import CorruptEntryError, IncompatibleEntryError, Uncacheable
from ..pickler import default_allowlist
from .import_cost import defer_unused_imports
from .patching import find
from .triton_codec import register_triton_classes


# Classes of a BundledAOTAutogradResult's object graph (found by walking captured entries
# of inference, training, aliasing, mutation, graph-break and dynamic-shape programs).
# Looked up by name so that a class a torch version lacks is simply not allowed.
_SOURCE = "where a guarded value comes from (guards of CompiledFxGraph)"
_DESCRIPTOR = "which graph input or output a position is (AOTAutograd descriptors)"
_WRAPPER = "a runtime wrapper AOTAutograd replays around the compiled graph"
_ENTRY_CLASSES = (
    ("torch._functorch._aot_autograd.aot_autograd_result", "BundledAOTAutogradResult", "the entry itself: AOTAutograd's compile result"),
    ("torch._functorch._aot_autograd.aot_autograd_result", "BundledCompiledForward", "the forward graph's compile result"),
    ("torch._functorch._aot_autograd.aot_autograd_result", "BundledCompiledBackward", "the backward graph's compile result"),
    ("torch._functorch._aot_autograd.aot_autograd_result", "SerializedGraphModule", "a graph AOTAutograd keeps for its runtime wrappers"),
    ("torch._functorch._aot_autograd.schemas", "ViewAndMutationMeta", "AOTAutograd's runtime metadata: input mutations and output aliasing"),
    ("torch._functorch._aot_autograd.schemas", "InputAliasInfo", "how an input is mutated (ViewAndMutationMeta)"),
    ("torch._functorch._aot_autograd.schemas", "OutputAliasInfo", "how an output aliases inputs (ViewAndMutationMeta)"),
    ("torch._functorch._aot_autograd.schemas", "PlainTensorMeta", "metadata of a plain tensor input (ViewAndMutationMeta)"),
    ("torch._functorch._aot_autograd.schemas", "MemoryFormatMeta", "expected memory format of a tangent (ViewAndMutationMeta)"),
    ("torch._functorch._aot_autograd.schemas", "CacheableAOTConfig", "AOTAutograd's config as torch caches it (torch 2.13)"),
    # torch 2.11 stores the sanitized AOTConfig itself (compilers and decompositions
    # emptied); 2.13 stores a CacheableAOTConfig instead.
    ("torch._functorch._aot_autograd.schemas", "AOTConfig", "AOTAutograd's sanitized config (torch 2.11)"),
    ("torch._functorch._aot_autograd.schemas", "MutationType", "enum: kind of input mutation"),
    ("torch._functorch._aot_autograd.schemas", "OutputType", "enum: kind of output aliasing"),
    ("torch._functorch._aot_autograd.schemas", "SubclassCreationMeta", "metadata of tensor-subclass outputs (ViewAndMutationMeta)"),
    ("torch._functorch._aot_autograd.descriptors", "PlainAOTOutput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "PlainAOTInput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "TangentAOTInput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "ParamAOTInput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "BufferAOTInput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "InputMutationAOTOutput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "GradAOTOutput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "SavedForBackwardsAOTOutput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "IntermediateBaseAOTOutput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "AliasedArgWithMetadataMutationAOTOutput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "SyntheticBaseAOTInput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.descriptors", "ViewBaseAOTInput", _DESCRIPTOR),
    ("torch._functorch._aot_autograd.runtime_wrappers", "AOTDedupeWrapper", _WRAPPER),
    ("torch._functorch._aot_autograd.runtime_wrappers", "AOTSyntheticBaseWrapper", _WRAPPER),
    ("torch._functorch._aot_autograd.functional_utils", "ViewMetaSequence", "views an aliased output replays"),
    ("torch._functorch._aot_autograd.functional_utils", "MetadataKey", "key of a view replay (ViewMetaSequence)"),
    ("torch._inductor.output_code", "CompiledFxGraph", "Inductor's compiled graph: generated source and metadata"),
    ("torch._inductor.triton_bundler", "TritonBundle", "the Triton kernels of a compiled graph (GPU)"),
    ("torch._inductor.triton_bundler", "TritonKernelArtifacts", "one Triton kernel's cache files (GPU)"),
    ("torch._inductor.triton_bundler", "TritonKernelArtifact", "one Triton cache file (GPU)"),
    ("torch._inductor.metrics", "CachedMetricsDeltas", "Inductor metric counters of the compile"),
    ("torch._inductor.utils", "BoxedBool", "a boxed flag of a compiled graph"),
    ("torch._inductor.cudagraph_utils", "BoxedDeviceIndex", "the boxed CUDA-graph device index"),
    ("torch._inductor.cudagraph_utils", "CudagraphCachedInfo", "what CUDA-graph wrapping needs (placeholders, stack traces)"),
    ("torch._inductor.cudagraph_utils", "PlaceholderInfo", "a placeholder described for CUDA-graph errors"),
    ("torch._inductor.cudagraph_utils", "WrappedFunction", "a function CUDA graphs wrap"),
    # Graph partitions (CUDA graphs around partitions; "reduce-overhead", "max-autotune").
    ("torch._inductor.utils", "GraphPartitionMap", "how a graph splits into CUDA-graph partitions"),
    ("torch._dynamo.source", "LocalSource", _SOURCE),
    ("torch._dynamo.source", "AttrSource", _SOURCE),
    ("torch._dynamo.source", "GetItemSource", _SOURCE),
    ("torch._dynamo.source", "DictGetItemSource", _SOURCE),
    ("torch._dynamo.source", "GlobalSource", _SOURCE),
    ("torch._dynamo.source", "TensorPropertySource", _SOURCE),
    ("torch._dynamo.source", "TensorProperty", _SOURCE),
    ("torch._dynamo.source", "UnspecializedNNModuleSource", _SOURCE),
    ("torch._dynamo.source", "UnspecializedBuiltinNNModuleSource", _SOURCE),
    ("torch._dynamo.source", "UnspecializedParamBufferSource", _SOURCE),
    ("torch._dynamo.source", "NNModuleSource", _SOURCE),
    ("torch._dynamo.source", "ParamBufferSource", _SOURCE),
    ("torch._dynamo.source", "ConstantSource", _SOURCE),
    ("torch._dynamo.source", "RandomValueSource", _SOURCE),
    ("torch._dynamo.source", "ShapeEnvSource", _SOURCE),
    ("torch._dynamo.source", "GradSource", _SOURCE),
    ("torch._dynamo.source", "OptimizerSource", _SOURCE),
    ("torch._dynamo.source", "ConstDictKeySource", _SOURCE),
    ("torch._guards", "GuardSource", _SOURCE),
)
# Classes referenced as values (``OutputAliasInfo.raw_type``, ``output_types``) and
# functions referenced by name (``fx_kwargs["get_decomp_fn"]``).
_ENTRY_CALLABLES = (
    # vmap inside a compiled region: Dynamo/AOT graphs call these to enter and leave it.
    ("torch._functorch.predispatch", "_add_batch_dim", "graphs enter vmap"),
    ("torch._functorch.predispatch", "_remove_batch_dim", "graphs leave vmap"),
    ("torch", "Tensor", "an output's type (OutputAliasInfo.raw_type)"),
    ("torch.nn.parameter", "Parameter", "an output's type (OutputAliasInfo.raw_type)"),
    ("torch._subclasses.functional_tensor", "FunctionalTensor", "an output's type (OutputAliasInfo.raw_type)"),
)
# Named by ``fx_kwargs["get_decomp_fn"]``, which only compile_fx calls (a hit never does):
# deferred, so a hit does not import torch._inductor.decomposition (a slow import).
_DEFERRED_CALLABLES = (
    ("torch._inductor.decomposition", "select_decomp_table", "fx_kwargs['get_decomp_fn'], called only by compile_fx"),
)


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
    allow.register(mode_cls, "custom", encode=int, decode=lambda v: _view_mode(mode_cls, v),
                   reason="enum of a view replay (ViewMeta state)")
    for name in dir(functionalization):
        cls = getattr(functionalization, name)
        if name.endswith("ViewMeta") and isinstance(cls, type) and hasattr(cls, "__setstate__"):
            allow.register(cls, "custom", encode=functools.partial(_view_meta_state, mode_cls=mode_cls),
                           decode=_view_meta_builder(cls, mode_cls),
                           reason="a view an aliased output replays, rebuilt from ints and flags")


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


def _check_compiled_fx_graph(state: dict[str, Any]) -> None:
    """torch writes a graph's wrapper source to ``<cache dir>/<cache_key>.py`` and imports
    it (CompiledFxGraph.write_to_disk), keeping a file that already exists.  A stored key is
    therefore a file name: it must be the one torch derives from the source itself (its
    code hash), never a path of the document's choosing, nor the name of another graph's
    module, which a source stored under it would replace for every later compile."""
    source, key = state.get("source_code"), state.get("cache_key")
    if source is None and key is None:
        return
    if type(source) is not str or type(key) is not str:
        raise CorruptEntryError("bad CompiledFxGraph source_code or cache_key")
    code_hash = find("torch._inductor.codecache", "code_hash")
    if code_hash is None:
        raise IncompatibleEntryError("this torch has no codecache.code_hash to check a graph's module name")
    if code_hash(source.strip()) != key:
        raise CorruptEntryError("CompiledFxGraph.cache_key is not the hash of its source_code")


# A Triton cache directory or file name (torch writes kernel artifacts under these names).
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def _check_triton_names(state: dict[str, Any]) -> None:
    for field in ("kernel_hash", "filename"):
        if field in state and not (type(state[field]) is str and _FILE_NAME.match(state[field]) and ".." not in state[field]):
            raise CorruptEntryError(f"bad Triton artifact {field} {state[field]!r}")


_CHECKS = {
    "CompiledFxGraph": _check_compiled_fx_graph,
    "TritonKernelArtifacts": _check_triton_names,
    "TritonKernelArtifact": _check_triton_names,
}


def _counter(state: Any) -> collections.Counter[Any]:
    if type(state) is not dict:
        raise CorruptEntryError("a Counter's state must be a dict")
    return collections.Counter(state)


def entry_allowlist() -> Any:
    """The pickler allowlist for captured entries: the default one plus the classes above.

    Built per call (cheap) and owned by the caller, so no module-level registry exists.
    """
    defer_unused_imports()  # before the lookups below import torch's codecache
    allow = default_allowlist().copy()
    for module, name, reason in _ENTRY_CLASSES:
        cls = find(module, name)
        if isinstance(cls, type):
            allow.register(cls, _strategy(cls), reason=reason, check=_CHECKS.get(name))
    _register_view_metas(allow)
    # GPU entries: Triton kernel bundles (static launchers, configs); a no-op without Triton.
    register_triton_classes(allow)
    # Counter (CompiledFxGraph.counter_deltas) is a dict subclass: rebuilt from a plain dict.
    allow.register(collections.Counter, "custom", encode=dict, decode=_counter,
                   reason="Inductor's counter deltas (CompiledFxGraph.counter_deltas)")
    for module, name, reason in _ENTRY_CALLABLES:
        obj = find(module, name)
        if obj is not None:
            allow.register_callable(obj, f"{module}:{name}", reason=reason)
    for module, name, reason in _DEFERRED_CALLABLES:
        allow.register_deferred_callable(module, name, reason=reason)
    return allow.freeze()
