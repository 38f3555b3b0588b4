"""Frozen graphs (Inductor's ``freezing=True``): what their capture and their hit need.

Under freezing, inference graphs (grad mode off) are compiled by
``compile_fx.fw_compiler_freezing`` instead of the plain forward compiler: it replaces each
parameter and buffer AOTAutograd lifted to an input by a constant attribute of the graph
(``freezing.replace_params_with_constants`` -> ``constant_folding.replace_node_with_constant``,
named ``_frozen_param<N>``), folds what depends only on constants (batch norm into conv
weights, re-laid-out or pre-packed weights are new ``_frozen_param`` attributes too), compiles
the result with ``inner_compile``, and returns a ``wrapper`` that keeps only the arguments the
compiled graph still takes (``preserved_arg_indices``, shifted by ``unwrapped_args_offsets``
for tensor subclasses).  AOTAutograd's runtime wrappers then call that wrapper with every
flat argument, the lifted ones first.

The ``CompiledFxGraph`` that ``inner_compile`` returns names its frozen constants in
``frozen_param_names`` (graph constant -> attribute of the frozen GraphModule) instead of
holding them: torch's FX graph cache reads them from the GraphModule its cache-hit path
rebuilds by tracing and freezing again, and keys them by value (``FxGraphCachePickler`` hashes
a frozen parameter's values when Inductor may inline it, its metadata otherwise).

artcache's hit runs no tracing, so an entry holds the constants themselves:

* :func:`recording` wraps ``fw_compiler_freezing`` during a capture: the frozen GraphModule
  and the wrapper's argument selection are recorded, and the wrapper is returned behind a
  function whose ``__wrapped__`` is the ``CompiledFxGraph``, so that AOTAutograd's bundled
  entry (``AOTAutogradCache.make_entry`` unwraps ``__wrapped__``) holds it.
* :func:`hold_constants` gives the entry's (already copied) ``CompiledFxGraph`` every frozen
  constant's tensor in ``constants`` and empties ``frozen_param_names``; the pickler then
  stores each tensor storage as a content-addressed blob, once across entries.  Except the
  constants that *are* one of the model's parameters or buffers, or a view of one (folding
  turns a weight's transpose into a view): a fresh compile's constant is that very tensor
  (``replace_params_with_constants`` binds the real ``params_flat[i]``), so the entry
  records only which lifted input and which view (:class:`ModelConstant`), and
  :func:`bind_model_constants` gives a hit the same view of the calling process's tensor.  The key's ``frozen_weights`` factor already pins their values, so
  storing them again bought nothing, and reading, checking and copying them was most of
  what a frozen hit cost over an unfrozen one (the MLP's eight weight matrices, GPT-2's
  every Linear weight).
* :func:`selecting` runs a hit's ``wrap_post_compile`` with the forward narrowed to the
  recorded selection, as the wrapper did in the compiling process.

On CPU, Inductor's freezing passes would also pre-pack weights for oneDNN/MKL
(``cpp.weight_prepack``): the packed weights are opaque ``mkldnn`` tensors, whose only
serialized form (``mkldnn._get_mkldnn_serialized_md``) holds a pointer-dependent field, so
they can be neither content-addressed nor shown to be rebuilt exactly.  A frozen graph that
artcache captures is therefore compiled with ``cpp.weight_prepack`` off (:func:`recording`):
its weights stay dense tensors, still folded (batch norm into convolutions, transposes,
dtype conversions).  Cold and warm run the same entry, so they agree bitwise; against
torch's own frozen compile the CPU kernels differ (plain GEMM calls instead of pre-packed).

Whether an entry serves the weights of the calling process is the key's business: the
``frozen_weights`` factor (``artcache.weights``) hashes the values of every lifted
parameter and buffer.  Checked on torch 2.13 (CPU).  The wrapper, its closure's names and
``inner_compile`` passed by keyword read the same in every torch source compared (releases
before and after 2.11); the GPU cases ``frozen_resnet50``/``frozen_gpt2`` check 2.11.  A
wrapper of another shape leaves no entry (the graph is compiled, not cached), never a
wrong one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CorruptEntryError, Uncacheable
from .patching import patched


# The form of a frozen entry, part of its ``frozen_weights`` factor: entries of this form
# leave out the constants that are the model's own tensors (:func:`bind_model_constants`),
# so a reader that expects every constant stored must never find one.
ENTRY_FORM = "constants-bound-v1"


def weights_factor(digest: str) -> str:
    """The ``frozen_weights`` factor's value: the weights' digest and the entry form."""
    return f"{ENTRY_FORM}:{digest}"


def parameter_freezing() -> bool:
    """Whether a graph compiled now is frozen: ``freezing`` on and grad mode off
    (``compile_fx`` picks ``fw_compiler_freezing`` on exactly this condition)."""
    return bool(torch._inductor.config.freezing) and not torch.is_grad_enabled()


@dataclass
class FrozenRecord:
    """What one frozen forward compile left: the frozen GraphModule (its ``_frozen_param``
    attributes are the constants) and, per argument the compiled graph takes, the index of
    the flat argument it is."""

    gm: Any = None
    selection: tuple[int, ...] | None = None
    frozen: bool = False  # a frozen forward was compiled (selection None: it is not storable)
    # The lifted parameters and buffers (``TracingContext.params_flat``, in the order of
    # ``rebuild.lifted_inputs``) while the compile runs; dropped once the entry is made.
    params: list[Any] | None = None
    # Graph constant name -> the lifted input it is a view of (filled by hold_constants).
    aliases: dict[str, ModelConstant] = field(default_factory=dict)


def _selection(wrapper: Callable[..., Any]) -> tuple[int, ...]:
    """The argument indices ``fw_compiler_freezing``'s wrapper passes on, read from its
    closure (``args[i - unwrapped_args_offsets[min(i, max_offset_idx)]] for i in
    preserved_arg_indices``)."""
    code = getattr(wrapper, "__code__", None)
    cells = getattr(wrapper, "__closure__", None) or ()
    names = getattr(code, "co_freevars", ())
    free = {name: cell.cell_contents for name, cell in zip(names, cells)}
    preserved = free.get("preserved_arg_indices")
    offsets = free.get("unwrapped_args_offsets")
    max_offset = free.get("max_offset_idx")
    if not (isinstance(preserved, list) and isinstance(offsets, list) and isinstance(max_offset, int)
            and all(type(i) is int for i in preserved) and all(type(o) is int for o in offsets)):
        raise Uncacheable("freezing-wrapper", "fw_compiler_freezing's wrapper has an unknown shape")
    try:
        return tuple(i - offsets[min(i, max_offset)] for i in preserved)
    except IndexError as exc:
        raise Uncacheable("freezing-wrapper", "argument offsets out of range") from exc


@contextlib.contextmanager
def recording(record: FrozenRecord) -> Iterator[None]:
    """While active, a frozen forward compile fills ``record`` and returns a callable that
    AOTAutograd's bundled entry can unwrap to the ``CompiledFxGraph``."""
    from torch._inductor import compile_fx

    original = compile_fx.fw_compiler_freezing

    def fw_compiler_freezing(aot_gm: Any, aot_inputs: Any, *args: Any, inner_compile: Any, **kwargs: Any) -> Any:
        seen: dict[str, Any] = {}

        def recording_inner_compile(gm: Any, inputs: Any, **inner_kwargs: Any) -> Any:
            seen["gm"], seen["graph"] = gm, inner_compile(gm, inputs, **inner_kwargs)
            return seen["graph"]

        # The real parameters and buffers freezing binds as constants (torch 2.11-2.13:
        # ``freeze`` reads ``params_flat_unwrap_subclasses``, equal to ``params_flat`` when no
        # lifted input is a tensor subclass; a subclass input never matches an alias below).
        context = torch._guards.TracingContext.try_get()
        params = getattr(context, "params_flat", None)
        record.params = list(params) if isinstance(params, (list, tuple)) else None
        wrapper = original(aot_gm, aot_inputs, *args, inner_compile=recording_inner_compile, **kwargs)
        graph = seen.get("graph")
        if graph is None or wrapper is graph:  # AOT compilation returns the graph itself
            return wrapper
        record.frozen, record.gm = True, seen["gm"]
        try:
            record.selection = _selection(wrapper)
        except Uncacheable:
            record.selection = None  # the compile goes on; the capture saves no entry

        @functools.wraps(wrapper)
        def frozen(args: list[Any]) -> Any:
            return wrapper(args)

        frozen._boxed_call = True  # type: ignore[attr-defined]
        frozen.__wrapped__ = graph  # type: ignore[attr-defined]
        return frozen

    with patched(compile_fx, "fw_compiler_freezing", fw_compiler_freezing), \
            torch._inductor.config.patch({"cpp.weight_prepack": False}):
        yield


def hold_constants(entry: Any, record: FrozenRecord) -> None:
    """Make the entry's forward graph hold its frozen constants (it names them only).
    ``entry`` has been through ``pre_save``, so its graph is a copy of the live one."""
    graph = getattr(getattr(entry, "compiled_fw", None), "result", None)
    names = getattr(graph, "frozen_param_names", None)
    if graph is None or names is None:
        raise Uncacheable("freezing-entry", "the frozen forward graph is missing from the entry")
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    constants = dict(getattr(graph, "constants", None) or {})
    aliases: dict[str, ModelConstant] = {}
    # torch saves the entry inside the compile's fake mode; these are real tensors.
    with unset_fake_temporarily():
        for name, attr in names.items():
            value = getattr(record.gm, attr, None)
            if not isinstance(value, torch.Tensor) or value.layout is not torch.strided:
                raise Uncacheable("freezing-constant", f"frozen constant {name} is not a dense tensor")
            alias = _model_constant(value, record.params or ())
            if alias is not None:
                aliases[name] = alias  # a view of the model's own tensor: a hit binds the live one
                continue
            # A frozen parameter is the model's own Parameter; the graph reads only its data.
            constants[name] = value.detach() if isinstance(value, torch.nn.Parameter) else value
    graph.constants = constants
    graph.frozen_param_names = {}
    record.aliases = aliases


@dataclass(frozen=True)
class ModelConstant:
    """A frozen constant that is a view of one lifted input's storage (most often the
    parameter itself, or its transpose when folding turned ``permute`` into a view)."""

    index: int  # among the lifted inputs (``rebuild.lifted_inputs``)
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    def to_record(self) -> list[Any]:
        return [self.index, list(self.shape), list(self.stride), self.offset]

    @classmethod
    def from_record(cls, record: Any) -> ModelConstant:
        """Parse a stored record (hostile bytes, already decoded to plain data)."""
        def ints(value: Any, low: int) -> bool:
            return type(value) is list and len(value) <= 16 and all(type(i) is int and low <= i < 1 << 40 for i in value)

        if not (type(record) is list and len(record) == 4 and type(record[0]) is int and 0 <= record[0] < 1 << 20
                and ints(record[1], 0) and ints(record[2], 0) and len(record[1]) == len(record[2])
                and type(record[3]) is int and 0 <= record[3] < 1 << 40):
            raise CorruptEntryError("bad frozen model-constant record")
        return cls(record[0], tuple(record[1]), tuple(record[2]), record[3])


def _owns_its_storage(t: Any) -> bool:
    """A dense, contiguous tensor that is its whole storage: every byte a view of that
    storage can read is one the ``frozen_weights`` digest hashed."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout is torch.strided and t.is_contiguous()
            and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def _model_constant(value: torch.Tensor, params: Sequence[Any]) -> ModelConstant | None:
    """The lifted input whose storage ``value`` is a view of (same dtype and device), else
    None.  Only inputs that own their storage whole, so the view reads nothing unhashed."""
    ptr = value.untyped_storage().data_ptr()
    for i, param in enumerate(params):
        if (_owns_its_storage(param) and param.device == value.device and param.dtype == value.dtype
                and param.untyped_storage().data_ptr() == ptr):
            return ModelConstant(i, tuple(value.shape), tuple(value.stride()), value.storage_offset())
    return None


def bind_model_constants(entry: Any, aliases: Mapping[str, ModelConstant], lifted: Sequence[Any]) -> None:
    """Give a loaded frozen entry's forward graph the constants that are views of the
    model's own tensors, made from this process's lifted inputs (a fresh compile binds
    the same tensors).  The key's ``frozen_weights`` factor has checked their values."""
    if not aliases:
        return
    graph = getattr(getattr(entry, "compiled_fw", None), "result", None)
    constants = getattr(graph, "constants", None)
    if graph is None or not isinstance(constants, dict):
        raise CorruptEntryError("a frozen entry without a forward graph names model constants")
    bound = dict(constants)
    for name, alias in aliases.items():
        if name in bound:
            raise CorruptEntryError(f"frozen constant {name} is both stored and bound to the model")
        if alias.index >= len(lifted) or not _owns_its_storage(lifted[alias.index]):
            raise CorruptEntryError(f"frozen constant {name} names no dense lifted input ({alias.index})")
        source = lifted[alias.index].detach()
        # Bounds checked here, so that a bad record is a corrupt entry with a reason
        # rather than as_strided's error: the last element the view reaches must exist.
        last = alias.offset + sum((n - 1) * st for n, st in zip(alias.shape, alias.stride)) if all(alias.shape) else -1
        if last >= source.numel():
            raise CorruptEntryError(f"frozen constant {name} reaches past its lifted input")
        bound[name] = source.as_strided(alias.shape, alias.stride, alias.offset)
    graph.constants = bound


class _Selected:
    """A ``BundledCompiledForward`` whose graph takes only the selected flat arguments."""

    def __init__(self, inner: Any, selection: Sequence[int]) -> None:
        self._inner = inner
        self._selection = tuple(selection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, args: Sequence[Any]) -> Any:
        if any(i >= len(args) for i in self._selection):
            raise CorruptEntryError("a frozen entry selects arguments the graph does not have")
        return self._inner.load([args[i] for i in self._selection])

    def post_compile(self, result: Any, fx_config: Any) -> Any:
        compiled = self._inner.post_compile(result, fx_config)
        selection = self._selection

        def run(args: list[Any]) -> Any:
            picked = [args[i] for i in selection]
            args.clear()
            return compiled(picked)

        run._boxed_call = True  # type: ignore[attr-defined]
        return run


@contextlib.contextmanager
def selecting(entry: Any, selection: Sequence[int] | None) -> Iterator[None]:
    """While active, ``entry.wrap_post_compile`` builds the forward of a frozen graph: it is
    loaded for, and called with, the selected flat arguments only."""
    if selection is None:
        yield
        return
    if getattr(entry, "compiled_bw", None) is not None:
        raise CorruptEntryError("a frozen entry has a backward graph")
    forward = entry.compiled_fw
    entry.compiled_fw = _Selected(forward, selection)
    try:
        yield
    finally:
        entry.compiled_fw = forward
