"""Every reach into torch internals, in one module, so the rest of artcache reads as plain code.

Supported: torch 2.11 (the GPU machine) through 2.13 (CI).  What we touch and why:

* **Capture (miss).**  AOTAutograd can build a ``BundledAOTAutogradResult``: forward and
  backward ``CompiledFxGraph`` (generated source, Triton bundle, output strides, guards)
  plus the runtime metadata its wrappers need.  torch builds it only for its own
  AOTAutogradCache, so during our compile we turn that cache on with three stubs: the key
  function returns a nonce (skips hashing torch's sources), the lookup always misses (no
  disk read), and ``save`` keeps the entry in memory instead of pickling it to disk.  This is
  the configuration torch's own precompile (``torch/_dynamo/aot_compile.py``) uses.
* **C++ kernels.**  They are not in the entry (torch finds them again by recompiling or by a
  cache path derived from the compiler command line, which costs a vec-ISA probe subprocess).
  ``CppCodeCache.load_async`` is wrapped to record each built library under a digest of its
  *inputs*, and on a hit answered from the entry by ``cls._load_library`` on the stored bytes.
* **Rebuild (hit).**  ``entry.wrap_post_compile`` runs the post-compile steps (loading the
  wrapper module, input realignment, CUDA-graph wrapping, output strides, guards) exactly
  as torch's own cache hit does.

The patches are process-wide class attributes: they are installed under a lock for the
duration of one compile or one rebuild, and always restored.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import dataclasses
import enum
import functools
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptEntryError, Uncacheable

# One compile or rebuild at a time may patch torch's classes.  Re-entrant because a
# compile can trigger a nested Dynamo compile on the same thread.
_PATCH_LOCK = threading.RLock()



def _autograd_cache() -> Any:
    from torch._functorch._aot_autograd import autograd_cache

    return autograd_cache


def _cpp_code_cache() -> Any:
    from torch._inductor.codecache import CppCodeCache

    return CppCodeCache


@dataclass(frozen=True)
class CppKernel:
    """A built C++ library as ``CppCodeCache.load_async`` produced it."""

    key: str  # digest of the load_async inputs (class, code, flags), not of a command line
    cache_class: str  # CppCodeCache subclass name: decides how the library is loaded
    library: bytes


@dataclass
class Capture:
    """What one compile produced, filled in while :func:`capture_compile` runs."""

    entry: Any = None
    cpp_kernels: dict[str, CppKernel] = dataclasses.field(default_factory=dict)
    _pending: dict[str, tuple[type, Callable[[], Any]]] = dataclasses.field(default_factory=dict)

    def collect_kernels(self) -> None:
        """Read the built libraries.  Called after the compile, when every build is done."""
        for key, (cls, get_result) in self._pending.items():
            lib = get_result()
            path = getattr(lib, "__file__", None) or getattr(lib, "_name", None)
            if not path:
                raise Uncacheable("cpp-kernel", f"cannot locate the library of kernel {key[:12]}")
            self.cpp_kernels[key] = CppKernel(key, cls.__name__, Path(path).read_bytes())
        self._pending.clear()


def _load_async_key(cls: type, bound: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for part in (
        cls.__name__,
        bound.get("main_code", ""),
        bound.get("device_type", "cpu"),
        repr(tuple(bound.get("extra_flags", ()))),
        bound.get("optimized_code") or "",
    ):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


# Positional order of CppCodeCache.load_async after ``cls`` (the same in torch 2.11-2.13).
_LOAD_ASYNC_PARAMS = ("main_code", "device_type", "submit_fn", "extra_flags", "optimized_code")


def _bind_load_async(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = dict(zip(_LOAD_ASYNC_PARAMS, args))
    bound.update(kwargs)
    return bound


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    original = obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


@contextlib.contextmanager
def capture_compile() -> Iterator[Capture]:
    """Run the enclosed ``compile_fx`` so that it leaves its complete result in a Capture."""
    ac = _autograd_cache()
    cpp = _cpp_code_cache()
    capture = Capture()
    original_load_async = cpp.__dict__["load_async"]

    def save(key: str, entry: Any, remote: bool = False) -> None:
        # pre_save copies each CompiledFxGraph and strips what cannot outlive the process
        # (current_callable, the live module); torch calls it before pickling, as do we.
        entry.pre_save()
        if getattr(entry, "serialized_bw_module", None) is not None:
            # The backward graph as a pickled GraphModule, whose reload execs stored Python
            # source; only compiled autograd reads it, and the backward is already compiled.
            entry.serialized_bw_module = None
        capture.entry = entry

    def load_async(cls: type, *args: Any, **kwargs: Any) -> Any:
        get_result = original_load_async.__func__(cls, *args, **kwargs)
        key = _load_async_key(cls, _bind_load_async(args, kwargs))
        capture._pending[key] = (cls, get_result)
        return get_result

    with contextlib.ExitStack() as stack:
        stack.enter_context(_PATCH_LOCK)
        stack.enter_context(
            torch._functorch.config.patch(
                enable_autograd_cache=True,  # makes AOTAutograd build an entry at all
                force_autograd_cache=True,
                bundled_autograd_cache=True,  # entry holds the CompiledFxGraphs; FxGraphCache bypassed
                force_non_lazy_backward_lowering=True,  # backward compiled now, so the entry is complete
                strict_autograd_cache=True,  # a bypass raises instead of silently saving nothing
                enable_remote_autograd_cache=False,
            )
        )
        stack.enter_context(
            torch._inductor.config.patch(
                fx_graph_cache=False, fx_graph_remote_cache=False, bundle_triton_into_fx_graph_cache=True
            )
        )
        stack.enter_context(_patched(ac, "autograd_cache_key", lambda *a, **k: ("artcache-capture", [])))
        stack.enter_context(_patched(ac.AOTAutogradCache, "_lookup", staticmethod(lambda *a, **k: None)))
        stack.enter_context(_patched(ac.AOTAutogradCache, "save", staticmethod(save)))
        stack.enter_context(_patched(cpp, "load_async", classmethod(load_async)))
        yield capture
    capture.collect_kernels()


@contextlib.contextmanager
def serve_cpp_kernels(kernels: Mapping[str, CppKernel], library_dir: Path) -> Iterator[None]:
    """While active, ``CppCodeCache.load_async`` loads stored libraries and never compiles."""
    cpp = _cpp_code_cache()
    library_dir.mkdir(parents=True, exist_ok=True)

    def load_async(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = _load_async_key(cls, _bind_load_async(args, kwargs))
        kernel = kernels.get(key)
        if kernel is None or kernel.cache_class != cls.__name__:
            raise Uncacheable("cpp-kernel-missing", f"entry lacks C++ kernel {key[:12]} ({cls.__name__})")
        path = _materialize(kernel, library_dir)
        # torch's own loader: dlopen for plain libraries, import as "<key>.<entry_function>"
        # (with the tensor data-pointer env var set) for Python-binding kernels.
        lib = cls._load_library(str(path), key)
        return lambda: lib

    with _PATCH_LOCK, _patched(cpp, "load_async", classmethod(load_async)):
        yield


def _materialize(kernel: CppKernel, library_dir: Path) -> Path:
    """Write the library under a name derived from its bytes, so an existing file with that
    name already holds them (no re-read) and concurrent writers publish the same content."""
    digest = hashlib.sha256(kernel.library).hexdigest()[:32]
    path = library_dir / f"{kernel.cache_class}-{digest}.so"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(kernel.library)
        os.replace(tmp, path)
    return path


def kernel_library_dir() -> Path:
    """Where loaded C++ kernels are written (dlopen needs a file): under Inductor's cache dir."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "artcache_kernels"


# -- rebuild -----------------------------------------------------------------------------
def guards_hold(entry: Any, example_inputs: Sequence[Any]) -> bool:
    """Whether the entry's Inductor shape guards accept these inputs (evaluated on hints,
    so nothing is installed into Dynamo's shape env yet)."""
    expr = getattr(entry, "guards_expr", None)
    if not expr:
        return True
    ac = _autograd_cache()
    try:
        from torch.fx.experimental.symbolic_shapes import guarding_hint_or_throw as hint
    except ImportError:  # torch 2.11: the same hint under its older name
        from torch.fx.experimental.symbolic_shapes import size_hint as hint

    symints = ac.AOTAutogradCache._filter_backed_symints(list(example_inputs))
    hints = [hint(s) for s in symints]
    return bool(ac.AOTAutogradCache.evaluate_guards(expr, hints))


def lifted_inputs(gm: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors AOTAutograd passes before the graph's own inputs on every call: the
    GraphModule's parameters, then its buffers, duplicates kept (``aot_module_simplified``
    in torch/_functorch/aot_autograd.py, torch 2.11-2.13).  Dynamo gives a graph such
    attributes for tensors it reaches outside the frame's inputs: a compiled optimizer
    step's state, for example.  A rebuilt entry is called with the live ones."""
    return [t for _, t in gm.named_parameters(remove_duplicate=False)] + [t for _, t in gm.named_buffers(remove_duplicate=False)]


def rebuild(
    entry: Any, example_inputs: Sequence[Any], *, cudagraphs: bool, lifted: Sequence[torch.Tensor] = ()
) -> Callable[..., Any]:
    """The compiled callable of ``entry``: torch's post-compile steps, no compilation.

    ``example_inputs`` are the graph's inputs; ``lifted`` (:func:`lifted_inputs`) go first
    in every call, as in torch's own compiled callable.  Must run inside Dynamo's backend
    call, so that its TracingContext receives the output strides and the SymInt inputs
    carry the entry's guards into Dynamo's shape env.
    """
    from torch._inductor.cudagraph_utils import BoxedDeviceIndex
    from torch._inductor.utils import BoxedBool

    fx_config = {
        "cudagraphs": BoxedBool(cudagraphs),
        # One object shared by forward and backward post-compile (CUDA-graph device index).
        "boxed_forward_device_index": BoxedDeviceIndex(None),
        "compile_region_name": None,
    }
    aot_config = entry.sanitized_aot_config
    if dataclasses.is_dataclass(aot_config) and hasattr(aot_config, "enable_log"):
        # Structured logging of the stored graph strings costs time and logs nothing new.
        aot_config = dataclasses.replace(aot_config, enable_log=False)
    context = torch._guards.TracingContext.try_get()
    tracing = contextlib.nullcontext() if context is not None else _fresh_tracing()
    with tracing:
        compiled = entry.wrap_post_compile([*lifted, *example_inputs], aot_config, fx_config)

    if lifted:
        prefix = list(lifted)

        def forward(*args: Any) -> Any:
            return compiled([*prefix, *args])
    else:
        def forward(*args: Any) -> Any:
            return compiled(list(args))

    return torch._dynamo.disable(forward, reason="artcache compiled graph")  # type: ignore[no-any-return]


def _fresh_tracing() -> Any:
    from torch._subclasses import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return torch._guards.tracing(torch._guards.TracingContext(FakeTensorMode(shape_env=ShapeEnv())))


def compile_fx(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx

    return inductor_compile_fx(gm, list(example_inputs))  # type: ignore[no-any-return]


def mode_options(mode: str | None, options: Mapping[str, Any] | None, dynamic: bool | None = None) -> dict[str, Any]:
    """The Inductor config patch that ``torch.compile(mode=..., options=...)`` applies."""
    from torch._inductor import list_mode_options

    patch: dict[str, Any] = dict(list_mode_options(mode, dynamic)) if mode else {}
    patch.update(options or {})
    return patch


def config_snapshots() -> dict[str, dict[str, Any]]:
    """The live Inductor and functorch configs (what a compile right now would use)."""
    return {
        "inductor": torch._inductor.config.get_config_copy(),
        "functorch": torch._functorch.config.get_config_copy(),
    }


# Per-backend float32 precision settings (torch >= 2.9's API).  Once any of them is set,
# the legacy getters (``get_float32_matmul_precision``, ``allow_tf32``) may raise, so each
# value is read on its own and a getter that raises is recorded as such.
_FP32_PRECISION = (
    ("fp32_precision", lambda: torch.backends.fp32_precision),
    ("cuda_matmul_fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
    ("cudnn_conv_fp32_precision", lambda: torch.backends.cudnn.conv.fp32_precision),
    ("cudnn_rnn_fp32_precision", lambda: torch.backends.cudnn.rnn.fp32_precision),
    ("mkldnn_matmul_fp32_precision", lambda: torch.backends.mkldnn.matmul.fp32_precision),
    ("mkldnn_conv_fp32_precision", lambda: torch.backends.mkldnn.conv.fp32_precision),
    ("mkldnn_rnn_fp32_precision", lambda: torch.backends.mkldnn.rnn.fp32_precision),
)


def _read(getter: Callable[[], Any]) -> Any:
    """A global setting's value, or a marker naming why it could not be read: torch's
    getters raise RuntimeError for some combinations of settings (the legacy and per-backend
    precision APIs mixed), and a torch without the attribute raises AttributeError."""
    try:
        value = getter()
    except (RuntimeError, AttributeError) as exc:
        return f"unreadable: {type(exc).__name__}"
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def numerics_flags(*, cpu_code: bool) -> dict[str, Any]:
    """Global switches that change what compiled kernels compute.

    ``cpu_code``: whether the graph may run as Inductor C++ code.  That code sizes its
    per-thread reduction buffers for the thread count at compile time, so a different
    ``torch.get_num_threads()`` needs another program (torch's own FX graph key includes it
    for the same reason); a graph that runs only on a GPU does not depend on it.
    """
    cuda = torch.backends.cuda.matmul
    flags: dict[str, Any] = {
        "deterministic": _read(torch.are_deterministic_algorithms_enabled),
        "deterministic_warn_only": _read(torch.is_deterministic_algorithms_warn_only_enabled),
        # Under deterministic algorithms, empty() and friends are filled (NaN, or the max
        # integer) inside the generated kernels: the fill is baked in.
        "fill_uninitialized_memory": _read(lambda: torch.utils.deterministic.fill_uninitialized_memory),
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        "default_dtype": _read(lambda: str(torch.get_default_dtype())),
        "grad_enabled": _read(torch.is_grad_enabled),
        "cpu_capability": _read(torch.backends.cpu.get_cpu_capability),
        "cuda_allow_tf32": _read(lambda: bool(cuda.allow_tf32)),
        "cuda_fp16_reduced": _read(lambda: bool(cuda.allow_fp16_reduced_precision_reduction)),
        "cuda_bf16_reduced": _read(lambda: bool(cuda.allow_bf16_reduced_precision_reduction)),
        "cudnn_allow_tf32": _read(lambda: bool(torch.backends.cudnn.allow_tf32)),
        "cudnn_deterministic": _read(lambda: bool(torch.backends.cudnn.deterministic)),
    }
    for name, getter in _FP32_PRECISION:
        flags[name] = _read(getter)
    if cpu_code:
        flags["cpu_threads"] = _cpp_thread_count()
    return flags


def _cpp_thread_count() -> int | str:
    """The thread count Inductor's C++ code is generated for (``parallel_num_threads``
    in torch/_inductor/utils.py): ``cpp.threads`` when set, else the runtime's count.
    With ``cpp.dynamic_threads`` the code reads the count at run time instead."""
    cpp = torch._inductor.config.cpp
    if cpp.dynamic_threads:
        return "dynamic"
    return int(cpp.threads) if cpp.threads >= 1 else torch.get_num_threads()


def may_run_cpu_code(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> bool:
    """Whether compiling ``gm`` may generate C++ code for the CPU: a CPU tensor among the
    inputs or among any node's values (the check of torch's FX graph key,
    ``FxGraphHashDetails._may_generate_cpu_cpp_code``), or no tensor anywhere to tell."""
    seen_tensor = False
    values: list[Any] = list(example_inputs)
    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                values.extend(node.meta.get(k) for k in ("val", "example_value"))
    for value in values:
        for leaf in torch.utils._pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                seen_tensor = True
                if leaf.device.type == "cpu":
                    return True
    return not seen_tensor


def custom_op_code(op: Any) -> dict[str, Any]:
    """The user code that tracing or compiling ``op`` (an OpOverload outside torch's own
    namespaces) can run, by role: values for :func:`artcache.code_digest.code_digest`.

    Reads torch's registries: ``torch.library.custom_op``'s definition (kernels per
    device, fake kernel, autograd formula and setup_context, vmap and torch-dispatch
    rules, autocast), the fake kernel of an op defined with ``torch.library`` directly,
    Python kernels attached to the overload (``py_impl``), and decompositions and
    Inductor lowerings registered for it.  Inductor's own tables are read only when their
    module is loaded: a process that never imported one cannot have registered into it.
    Raises ``Uncacheable`` for an op whose implementation is nowhere to be found.
    """
    import sys

    from torch._library.custom_ops import OPDEFS
    from torch._library.simple_registry import singleton

    qualname = op._schema.name  # "namespace::name"
    parts: dict[str, Any] = {"schema": str(op._schema)}
    opdef = OPDEFS.get(qualname)
    if opdef is not None:
        for attr in ("_init_fn", "_backend_fns", "_abstract_fn", "_setup_context_fn", "_backward_fn",
                     "_torch_dispatch_fns", "_vmap_fn", "_autocast_dtype", "_tags"):
            parts[attr] = getattr(opdef, attr, None)
    # The registry's own dict: ``find`` would create an entry for an op that has none.
    entry = getattr(singleton, "_data", {}).get(qualname)
    fake = getattr(getattr(entry, "fake_impl", None), "kernel", None)
    if fake is not None:
        parts["fake_impl"] = getattr(fake, "func", fake)
    parts["torch_dispatch_rules"] = dict(getattr(getattr(entry, "torch_dispatch_rules", None), "_data", {}) or {})
    parts["py_kernels"] = {str(k): v for k, v in getattr(op, "py_kernels", {}).items()}
    tables = [("decomposition_table", "torch._decomp", "decomposition_table"),
              ("inductor_decompositions", "torch._inductor.decomposition", "decompositions"),
              ("inductor_lowerings", "torch._inductor.lowering", "lowerings"),
              ("inductor_fallbacks", "torch._inductor.lowering", "fallbacks")]
    for role, module_name, attr in tables:
        module = sys.modules.get(module_name)
        table = getattr(module, attr, None) if module is not None else None
        if table is not None:
            found = [] if isinstance(table, collections.abc.Set) else [table[k] for k in (op, op.overloadpacket) if k in table]
            parts[role] = [op in table] if isinstance(table, collections.abc.Set) else found
    if opdef is None and fake is None and not parts["py_kernels"]:
        raise Uncacheable("custom-op", f"cannot identify the implementation of {qualname}")
    return parts


# -- what a captured entry may contain -------------------------------------------------
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
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch._subclasses.functional_tensor", "FunctionalTensor"),
)
# Named by ``fx_kwargs["get_decomp_fn"]``, which only compile_fx calls (a hit never does):
# deferred, so a hit does not import torch._inductor.decomposition (0.25 s on a 2-core CPU).
_DEFERRED_CALLABLES = (("torch._inductor.decomposition", "select_decomp_table"),)


def _find(module: str, name: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


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
    from .pickler import default_allowlist

    allow = default_allowlist().copy()
    for module, name in _ENTRY_CLASSES:
        cls = _find(module, name)
        if isinstance(cls, type):
            allow.register(cls, _strategy(cls))
    _register_view_metas(allow)
    # GPU entries: Triton kernel bundles (static launchers, configs); a no-op without Triton.
    from ._pickle_triton import register_triton_classes

    register_triton_classes(allow)
    # Counter (CompiledFxGraph.counter_deltas) is a dict subclass: rebuilt from a plain dict.
    allow.register(collections.Counter, "custom", encode=dict, decode=_counter)
    for module, name in _ENTRY_CALLABLES:
        obj = _find(module, name)
        if obj is not None:
            allow.register_callable(obj, f"{module}:{name}")
    for module, name in _DEFERRED_CALLABLES:
        allow.register_deferred_callable(module, name)
    return allow.freeze()


def config_overrides() -> dict[str, dict[str, Any]]:
    """Config entries that differ from their defaults, per module (for ``artcache explain``:
    a key factor names only a digest; these name the values behind it)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in (("inductor", torch._inductor.config), ("functorch", torch._functorch.config)):
        is_default = getattr(module, "_is_default", None)
        values = module.get_config_copy()
        out[name] = {k: v for k, v in values.items() if is_default is not None and not is_default(k)}
    return out
