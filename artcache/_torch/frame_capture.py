"""What Dynamo produced for one frame, read while it compiles, as plain data a fresh
process can check without Dynamo (the precompile tier, :mod:`artcache.frames`).

Three reads, all during a ``torch.compile`` call that artcache starts itself:

* **guards**, through ``guard_filter_fn`` (a public ``torch.compile`` option: Dynamo hands
  it every guard of the frame, ``GuardFilterEntry``, after tracing).  Each is translated to
  a small plain-data check (:func:`translate_guard`); a guard kind or a source this module
  does not translate makes the frame not precompilable, with the kind as the reason.
  Nothing of Dynamo's guard state is pickled.
* **the graph's inputs**, from the placeholders' ``grapharg`` sources, as access paths
  (``[["L", "self"], ["a", "_modules"], ["i", "fc1"], ...]``, :mod:`.frame_paths`; a SymInt
  input's path ends in a tensor property, ``["size", 0]``).
* **the trace**, from the instruction translator that called the backend: whether the
  graph ended at a graph break, whether Python side effects remain to be replayed,
  which input sizes are symbolic (:mod:`artcache._torch.shape_guards` translates the
  ``SHAPE_ENV`` guard), and the code objects Dynamo inlined (their digests go into the
  entry).

Checked on torch 2.13 (CPU) and 2.11 (H200: GPT-2, resnet50 and the MLP replay).  A
missing attribute raises :class:`NotPrecompilable`.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..code_digest import code_shape_digest
from ..errors import NotPrecompilable, Uncacheable
from . import shape_guards
from .frame_paths import (  # noqa: F401 - the tier reads them here
    generic_getattr, named, resolve_named, source_path, step_value, wrapped_hops)

__all__ = ["NotPrecompilable"]


# Values an equality guard may hold: exactly these types, compared with type and value.
_CONSTANT_TYPES = (type(None), bool, int, float, str)
# Guard kinds on Dynamo's global state; one snapshot (:func:`global_state`) covers them all.
_GLOBAL_STATE_GUARDS = frozenset({
    "GRAD_MODE", "DETERMINISTIC_ALGORITHMS", "GLOBAL_STATE", "TORCH_FUNCTION_STATE",
    "DEFAULT_DEVICE", "AUTOGRAD_SAVED_TENSORS_HOOKS",
})
def tensor_facts(value: Any) -> list[Any]:
    """What a tensor guard compares: exact class, dtype, device, sizes, strides, storage
    offset, requires_grad and dispatch keys (which cover inference tensors, conjugate and
    negative bits, functorch wrappers).  ``None`` for anything but a plain tensor or
    parameter (subclasses are not precompilable)."""
    if type(value) not in (torch.Tensor, torch.nn.Parameter) or value.layout != torch.strided:
        return []
    return [type(value).__name__, str(value.dtype), str(value.device), list(value.shape), list(value.stride()),
            value.storage_offset(), bool(value.requires_grad), str(torch._C._dispatch_keys(value))]


def tensor_check(facts: list[Any]) -> Any:
    """A fast ``tensor_facts(value) == facts`` for every call after the first: the first
    match compares the full facts; later calls compare the same values field by field
    against objects resolved once (dtype, device, the dispatch key set)."""
    cached: list[Any] = []
    if None in facts[3] or None in facts[4]:  # sizes or strides a shape guard checks instead
        sizes, strides = facts[3], facts[4]
        rest = facts[:3] + facts[5:]

        def holds_dynamic(value: Any) -> bool:
            found = tensor_facts(value)
            return (bool(found) and found[:3] + found[5:] == rest and _dims_match(found[3], sizes)
                    and _dims_match(found[4], strides))

        return holds_dynamic

    def holds(value: Any) -> bool:
        if not cached:
            if tensor_facts(value) != facts:
                return False
            cached.extend([type(value), value.dtype, value.device, tuple(facts[3]), tuple(facts[4]), facts[5],
                           facts[6], torch._C._dispatch_keys(value)])
            return True
        cls, dtype, device, shape, stride, offset, grad, keys = cached
        return (type(value) is cls and value.dtype is dtype and value.layout is torch.strided
                and value.device == device and value.shape == shape and value.stride() == stride
                and value.storage_offset() == offset and value.requires_grad is grad
                and torch._C._dispatch_keys(value) == keys)

    return holds


def _dims_match(found: list[int], want: list[int | None]) -> bool:
    return len(found) == len(want) and all(w is None or f == w for f, w in zip(found, want))


def storage_groups(tensors: Sequence[Any]) -> list[int]:
    """For each tensor, the index of the first one sharing its storage (``-1`` for a
    value that is not a tensor): the aliasing pattern of a graph's inputs."""
    first: dict[int, int] = {}
    out = []
    for index, value in enumerate(tensors):
        if not isinstance(value, torch.Tensor):
            out.append(-1)
            continue
        out.append(first.setdefault(value.untyped_storage().data_ptr(), index))
    return out


def global_state() -> str:
    """Everything Dynamo's global-state guards compare, as one string: the C++
    ``GlobalStateGuard`` state (grad mode, autocast, default dtype, deterministic
    algorithms, matmul reductions, thread count, torch-function switches), inference mode,
    the default device, the torch-function and dispatch mode stacks and saved-tensor hooks."""
    guard = torch._C._dynamo.guards.GlobalStateGuard()
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return json.dumps([
        json.loads(guard.__getstate__()),
        torch.is_inference_mode_enabled(),
        str(torch.get_default_device()),
        torch._C._len_torch_function_stack(),
        torch._C._len_torch_dispatch_stack(),
        hooks is None,
        torch._C._is_fwd_grad_enabled(),
    ], sort_keys=True)


class StateCheck:
    """A fast check that the global state is still what :func:`global_state` returned
    when this object was made (the C++ guard, then the few values it does not cover)."""

    def __init__(self) -> None:
        self._guard = torch._C._dynamo.guards.GlobalStateGuard()
        self._rest = _rest_of_state()

    def holds(self) -> bool:
        return bool(self._guard.check()) and _rest_of_state() == self._rest


def _rest_of_state() -> tuple[Any, ...]:
    return (torch.is_inference_mode_enabled(), torch.get_default_device(), torch._C._len_torch_function_stack(),
            torch._C._len_torch_dispatch_stack(), torch._C._autograd._top_saved_tensors_default_hooks(False) is None,
            torch._C._is_fwd_grad_enabled())


def global_hooks_empty() -> bool:
    """No global module hooks are registered (Dynamo guards only their type; a replayed
    frame calls no module's ``__call__``, so any such hook makes it refuse)."""
    module = sys.modules["torch.nn.modules.module"]
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks", "_global_forward_hooks_with_kwargs", "_global_module_registration_hooks",
             "_global_parameter_registration_hooks", "_global_buffer_registration_hooks")
    return not any(getattr(module, name, None) for name in names)


def translate_guards(entries: Sequence[Any], dims: dict[Any, Any]) -> list[list[Any]]:
    """Every guard of a frame as plain-data checks: the ``SHAPE_ENV`` guard as shape
    checks (:mod:`artcache._torch.shape_guards`), the others by :func:`translate_guard`; a
    tensor's sizes and strides that ``dims`` (``shape_guards.dynamic_dims``) lists as
    symbolic are left to the shape checks, as Dynamo's tensor guard leaves them."""
    checks: list[list[Any]] = []
    shapes = 0
    for entry in entries:
        if entry.guard_type == "SHAPE_ENV":
            found = shape_guards.translate(entry.orig_guard)
            shapes += len(found)
            checks += found
            continue
        check = translate_guard(entry)
        if check is not None and check[0] == "tensor":
            symbolic = dims.get(entry.orig_guard.originating_source)
            if symbolic is not None and len(symbolic[0]) == len(check[2][3]) and len(symbolic[1]) == len(check[2][4]):
                check[2][3], check[2][4] = list(symbolic[0]), list(symbolic[1])
        if check is not None:
            checks.append(check)
    if dims and not shapes:
        # A symbolic size always has a guarded range (at least 2 <= s0): with none found,
        # the tensor checks that leave sizes open would accept any size.
        raise NotPrecompilable("shape-guard", "symbolic sizes without shape guards")
    return checks


def translate_guard(entry: Any) -> list[Any] | None:
    """One Dynamo guard (a ``GuardFilterEntry``) as a plain-data check, ``None`` for a
    global-state or shape guard (checked as a whole elsewhere), or NotPrecompilable."""
    kind = entry.guard_type
    guard = entry.orig_guard
    if kind in _GLOBAL_STATE_GUARDS:
        return None
    if kind == "SHAPE_ENV":
        return None  # translated as a whole (translate_guards)
    path = source_path(guard.originating_source)
    value = entry.value if entry.has_value else None
    if kind == "CONSTANT_MATCH" and torch_constant(value):
        return ["torch", path, torch_constant(value)]
    if kind in ("CONSTANT_MATCH", "EQUALS_MATCH") and type(value) is types.CodeType:
        return ["code", path, _code_identity(value)]  # Dynamo compares code objects with ==
    if kind in ("CONSTANT_MATCH", "EQUALS_MATCH") or (kind == "ID_MATCH" and (value is None or type(value) is bool)):
        form = constant_form(value)
        if form is None:
            raise NotPrecompilable(f"guard {kind}", type(value).__name__)
        return ["eq", path, form]
    if kind == "TENSOR_MATCH":
        facts = tensor_facts(value)
        if not facts:
            raise NotPrecompilable("guard TENSOR_MATCH", f"{type(value).__name__}")
        return ["tensor", path, facts]
    if kind == "TYPE_MATCH":
        return ["type", path, named(type(value))]
    if kind in ("MODULE_MATCH", "BUILTIN_MATCH", "FUNCTION_MATCH", "ID_MATCH", "CLASS_MATCH", "CLOSURE_MATCH"):
        if not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type, enum.Enum)):
            raise NotPrecompilable(f"guard {kind}", f"on a {type(value).__name__}")
        if kind == "CLOSURE_MATCH" and type(value) is types.FunctionType:
            # Dynamo matches a user function by its code alone (its closure and defaults,
            # where read, have guards of their own): identity where the function has a
            # name, else its code (a property's getter, a function made per call).
            try:
                return ["is", path, named(value)]
            except NotPrecompilable:
                return ["code", [*path, ["a", "__code__"]], _code_identity(value.__code__)]
        return ["is", path, named(value)]
    if kind == "NOT_PRESENT_IN_GENERIC_DICT":
        attr = _keyword(guard, "attr")
        return ["absent", path, attr]
    if kind == "EMPTY_NN_MODULE_HOOKS_DICT":
        return ["len", path, 0]
    if kind in ("DICT_LENGTH", "LIST_LENGTH", "SEQUENCE_LENGTH", "TUPLE_LENGTH", "LENGTH_CHECK"):
        return ["len", path, len(value)]  # type: ignore[arg-type]
    if kind in ("DICT_KEYS_MATCH", "DICT_KEYS"):
        keys = list(value.keys()) if isinstance(value, dict) else None  # type: ignore[union-attr]
        if keys is None or not all(type(k) in (str, int) for k in keys):
            raise NotPrecompilable(f"guard {kind}", "keys that are not str or int")
        return ["keys", path, keys]
    if kind == "DUPLICATE_INPUT":  # two sources, one object
        create = guard.create_fn
        other = create.keywords.get("source_b") if isinstance(create, functools.partial) else None
        if other is None:
            raise NotPrecompilable(f"guard {kind}", "no second source")
        return ["same", path, source_path(other)]
    if kind in ("DICT_CONTAINS", "DICT_NOT_CONTAINS"):
        return _contains_check(guard, kind, path)
    if kind == "HASATTR":
        return _hasattr_check(entry, path)
    raise NotPrecompilable(f"guard {kind}", entry.name)


# The mappings a dict guard reads: dicts, and a class's ``__dict__`` (a mapping proxy,
# where Dynamo guards a copy of it: ``dict(type(x).__dict__)``).
_MAPPINGS = (dict, types.MappingProxyType)


def _code_identity(code: types.CodeType) -> str:
    try:
        return code_shape_digest(code)
    except Uncacheable as error:
        raise NotPrecompilable("guard code", error.detail) from None


def code_check(digest: str) -> Callable[[Any], bool]:
    """What a ``code`` check compares: the value is a code object of that structural
    digest.  Code objects are immutable: one that matched is remembered, and the same
    object matches again without a digest."""
    matched: list[types.CodeType] = []

    def holds(value: Any) -> bool:
        if matched and value is matched[0]:
            return True
        if type(value) is not types.CodeType:
            return False
        try:
            same = code_shape_digest(value) == digest
        except Uncacheable:
            return False
        if same:
            matched[:] = [value]
        return same

    return holds


def has_key(value: Any, key: Any, present: bool) -> bool:
    """What a ``contains`` check compares: whether the mapping ``value`` has ``key``."""
    return isinstance(value, _MAPPINGS) and (key in value) == present


def has_keys(value: Any, keys: list[Any]) -> bool:
    """What a ``keys`` check compares: the mapping ``value``'s keys, in order."""
    return isinstance(value, _MAPPINGS) and list(value) == keys


def _contains_check(guard: Any, kind: str, path: list[Any]) -> list[Any]:
    """A dict-key guard (a ``**kwargs`` key read with ``.get`` or ``in``) as ``contains``
    ``[key, present]``.  torch 2.12 and later (checked on 2.13) guard presence with
    ``DICT_CONTAINS(key)`` and absence with ``DICT_NOT_CONTAINS(key)``; torch 2.11 and
    earlier with ``DICT_CONTAINS(key, invert)``, present when not ``invert``."""
    create = guard.create_fn
    keywords = create.keywords if isinstance(create, functools.partial) else {}
    key, invert = keywords.get("key"), keywords.get("invert", False)
    if type(key) not in (str, int) or type(invert) is not bool:
        raise NotPrecompilable(f"guard {kind}", "a key that is not str or int")
    return ["contains", path, [key, kind == "DICT_CONTAINS" and not invert]]


def _hasattr_check(entry: Any, path: list[Any]) -> list[Any]:
    """A HASATTR guard as ``hasattr`` or ``lacks``: Dynamo guards an attribute's presence
    and its absence (``getattr(self, "x", None)`` on a module without ``x``) with this one
    guard type, and decides which from the object when it builds the guard.

    torch 2.12 and later (checked on 2.13) pass the attribute as the guard's ``attr`` and
    the guarded object is the one that has or lacks it: its presence is read from it here,
    as Dynamo read it.  torch 2.11 and earlier guard the attribute's own source
    (``base.member``) and decide with ``hasattr(base, member)``; the entry has a value when
    ``base.member`` could be read (present).  It has none when reading it raised: an
    ``AttributeError`` (absent), as any other error would have raised from Dynamo's own
    ``hasattr`` as well, and no guard would exist."""
    guard = entry.orig_guard
    create = guard.create_fn
    attr = create.keywords.get("attr") if isinstance(create, functools.partial) else None
    if type(attr) is str:
        if not entry.has_value:
            raise NotPrecompilable("guard HASATTR", "no guarded object")
        return ["hasattr" if hasattr(entry.value, attr) else "lacks", path, attr]
    source = guard.originating_source
    if type(source).__name__ == "NNModuleSource":
        source = source.base
    base, member = getattr(source, "base", None), getattr(source, "member", None)
    if base is None or type(member) is not str:
        raise NotPrecompilable("guard HASATTR", f"source {type(source).__name__}")
    return ["hasattr" if entry.has_value else "lacks", source_path(base), member]


def _keyword(guard: Any, name: str) -> str:
    create = guard.create_fn
    value = create.keywords.get(name) if isinstance(create, functools.partial) else None
    if type(value) is not str:
        raise NotPrecompilable(f"guard {guard.create_fn_name()}", f"no {name}")
    return value


class FrameTrace:
    """What the instruction translator that compiled one graph says about its frame,
    read inside the backend call (Dynamo clears it afterwards)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        output = tx.output
        reason = getattr(gm, "compile_subgraph_reason", None)
        self.graph_break = bool(getattr(reason, "graph_break", True))
        self.side_effects = _side_effects(output.side_effects)
        shape_env = getattr(output, "shape_env", None)
        symbols = getattr(shape_env, "backed_var_to_val", None)
        if symbols is None:
            symbols = getattr(shape_env, "var_to_val", None)
        self.symbolic = bool(shape_env is not None and (symbols or shape_env.guards))
        # Which input sizes and strides are symbols: their tensor checks leave them to the
        # shape guards.  (Data-dependent symbols need nothing here: Dynamo guards none of
        # them, the graph checks them as it runs.)
        self.dims = shape_guards.dynamic_dims(output) if self.symbolic else {}
        self.frame_code = tx.f_code
        self.traced_code = [c for c in output.tracing_context.traced_code if c is not tx.f_code]
        self.input_paths: list[list[list[Any]]] = []
        self.input_problem = ""
        for node in gm.graph.find_nodes(op="placeholder"):
            arg = node.meta.get("grapharg")
            if arg is None or arg.source is None:
                self.input_problem = f"placeholder {node.name} has no source"
                break
            example = getattr(arg, "example", None)
            # A SymInt input (a size the graph computes with) is read at its path, an int.
            if not isinstance(example, (torch.Tensor, torch.SymInt)) or getattr(arg, "pass_arg_as_tensor", False):
                self.input_problem = f"placeholder {node.name} is not a tensor or SymInt input"
                break
            try:
                self.input_paths.append(source_path(arg.source))
            except NotPrecompilable as exc:
                self.input_problem = str(exc)
                break

    def check(self) -> None:
        """Raise NotPrecompilable when the frame needs more than its graph to replay (a
        frame with side effects never gets here: it is a chain, ``frame_resume.needs_code``)."""
        if self.graph_break:
            raise NotPrecompilable("graph-break")
        if self.input_problem:
            raise NotPrecompilable("graph-input", self.input_problem)


def _side_effects(effects: Any) -> bool:
    """Whether Dynamo's bytecode has Python state to update after the graph: a mutation of
    an object that existed before the frame, an attribute set on a new object, a tensor
    hook or saved tensors.  Objects the frame merely created (its output tensors, new lists
    and dicts) are rebuilt from the return value instead."""
    from torch._dynamo.variables.base import AttributeMutationNew, ValueMutationNew

    for var in effects.id_to_variable.values():
        if not effects.is_modified(var):
            continue
        if not isinstance(var.mutation_type, (AttributeMutationNew, ValueMutationNew)) or var in effects.store_attr_mutations:
            return True
    return bool(effects.tensor_hooks or effects.save_for_backward)


def constant_form(value: Any, depth: int = 0) -> list[Any] | None:
    """A constant as plain data that keeps its exact type (``True`` is not ``1``, a tuple
    is not a list): ``[type name, value]``, or ``[tuple|list, [forms]]``.  ``None`` for
    anything else, NaN and nesting past 8 levels included."""
    if type(value) in _CONSTANT_TYPES and not (type(value) is float and value != value):
        return [type(value).__name__, value]
    if type(value) in (tuple, list) and depth < 8 and len(value) <= 64:
        forms = [constant_form(v, depth + 1) for v in value]
        return None if any(f is None for f in forms) else [type(value).__name__, forms]
    return None


def torch_constant(value: Any) -> list[str]:
    """``[type name, str]`` of a dtype, device, layout or memory format (what a
    ``["torch", ...]`` check compares), ``[]`` for anything else."""
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return [type(value).__name__, str(value)]
    return []


def is_inline_wrapper(code: types.CodeType) -> bool:
    """Whether ``code`` is the wrapper Dynamo traces instead of a function of torch's own
    (``torch._dynamo.external_utils.wrap_inline``): its locals are ``fn`` (a closure
    cell holding the function), ``args`` and ``kwargs``."""
    from torch._dynamo import external_utils

    return code.co_name == "inner" and code.co_filename == external_utils.__file__


def wrapper_globals() -> dict[str, Any]:
    """The globals of the frame :func:`is_inline_wrapper` recognizes."""
    from torch._dynamo import external_utils

    return vars(external_utils)


def module_of_code(code: types.CodeType) -> str | None:
    """The name of the imported module whose file holds ``code`` (None when none does).
    A frozen standard-library module (``_collections_abc``, ``os``...) names itself in
    its code's file name, ``<frozen NAME>``."""
    filename = code.co_filename
    if filename.startswith("<frozen ") and filename.endswith(">") and filename[8:-1] in sys.modules:
        return filename[8:-1]
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == code.co_filename:
            return name
    return None


def new_generation() -> None:
    """Move torch's module-generation counter, as entering a ``torch.compile``d function
    does (``OptimizeContext``'s ``on_enter``, ``install_generation_tagging_init``).
    CUDA-graph trees end a function's warmup and record it only once the generation has
    moved since the previous call (``CUDAGraphTreeManager.in_new_torch_compile_invocation``),
    so a replayed call, which enters no Dynamo context, moves it itself; otherwise every
    replayed call of ``mode="reduce-overhead"`` would run as a warmup, without CUDA graphs.
    Checked on torch 2.13 and 2.11 (``torch._dynamo.mutation_guard.GenerationTracker``)."""
    from torch._dynamo.mutation_guard import GenerationTracker

    GenerationTracker.generation += 1


def disable(fn: Any) -> Any:
    """``fn`` marked so that Dynamo never traces into it (a replayed frame calls the
    compiled graph directly)."""
    return torch._dynamo.disable(fn, reason="artcache precompiled frame")
