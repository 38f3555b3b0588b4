"""A loaded frame entry's checks as a tree of torch's C++ guards (the guard managers
Dynamo builds for its own cache entries), so that a precompiled frame served through
``torch.compile`` (:mod:`artcache.frame_hook`) costs what Dynamo's guards cost per call,
not a walk of the checks in Python.

Built from a replay's access paths and checks after they all held on a real call (the
values found then are the example values torch's accessors ask for); nothing of the store
is evaluated: every accessor and leaf guard is made by calling torch's API with names,
numbers and objects resolved in this process.  What the tree checks, per stored check kind:

==========  ================================================================================
tensor      ``add_tensor_match_guard`` (class, dispatch keys, dtype, device, sizes, strides,
            requires_grad) and the storage offset (a Python lambda)
eq          exact type and value (``add_type_match_guard`` + ``add_equals_match_guard``,
            ``None``/bools by identity); tuples and lists: a Python lambda on the value
torch       a Python lambda (a dtype, device, layout or memory format as text)
type, is    ``add_type_match_guard`` / ``add_id_match_guard`` on the object the name gave
absent      the instance ``__dict__`` does not hold the name (``add_dict_contains_guard``)
contains    a dict: exact type and ``add_dict_contains_guard``; a mapping proxy: a Python lambda
hasattr     a Python lambda (``lacks``: its negation)
len         ``add_dict_length_check_guard`` / ``add_length_check_guard``
keys        a Python lambda
code        a Python lambda (the code object's structural digest, once per code object)
same        identity of both paths with the object found, where neither starts at a local;
            from a local, one epilogue lambda reads both paths and compares identity
shape       one epilogue lambda for all shape checks: reads the sizes at their paths from
            the frame's locals and interprets the checks (:mod:`artcache.shape_expr`)
==========  ================================================================================

plus, where the graph's inputs were recorded as tensors of distinct storages, torch's
no-aliasing guard on them; plus the global state (``add_global_state_guard`` and a lambda for the rest, see
:class:`artcache._torch.frame_capture.StateCheck`) and an epilogue the caller gives.  A
check that cannot be expressed makes :func:`build` return None (the replay's Python checks
stay in use).  Checked on torch 2.13 (CPU).
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import shape_expr
from . import frame_capture as fc

log = logging.getLogger(__name__)

_SCALARS = {"NoneType": type(None), "bool": bool, "int": int, "float": float, "str": str}


class Unsupported(Exception):
    """A check the tree cannot express (internal to :func:`build`)."""


def build(code: types.CodeType | None, f_globals: Mapping[str, Any], nodes: Sequence[tuple[int, str, Any]],
          values: Sequence[Any], checks: Sequence[tuple[int, int, list[Any]]],
          epilogue: Callable[[Any], bool] | None, no_aliasing: Sequence[int] = ()) -> tuple[Any, list[Any]] | None:
    """The guard manager (``GuardManagerWrapper``) for a replay whose ``nodes`` (parent,
    step, key) resolved to ``values`` on a call where every check held, and the objects it
    compares by identity (keep them alive as long as the tree); None when a check or an
    accessor cannot be expressed.  With ``code``, the tree reads the locals of a frame of
    that code (torch's eval-frame checks it); without, a dict of locals (``root.check(d)``).
    ``no_aliasing``: nodes of tensors (each with a tensor check) that must not share storage
    (torch's ``install_no_tensor_aliasing_guard``, as Dynamo guards its own inputs)."""
    from torch._C._dynamo.eval_frame import code_framelocals_names
    from torch._dynamo.guards import GuardManagerType, GuardManagerWrapper

    plain = GuardManagerType.GUARD_MANAGER
    wrapper = GuardManagerWrapper()
    root = wrapper.root
    keep: list[Any] = []
    names = list(code_framelocals_names(code)) if code is not None else []
    managers: list[Any] = []
    roots: list[str] = []
    dict_roots: dict[str, Any] = {}
    try:
        for index, (parent, step, key) in enumerate(nodes):
            value = values[index]
            source = f"artcache_node_{index}"
            if step == "L" and code is None:
                managers.append(root.dict_getitem_manager(key=key, source=source, example_value=value,
                                                          guard_manager_enum=plain))
                roots.append("L")
            elif step == "L":
                if key not in names:
                    raise Unsupported(f"local {key}")
                local_index = len(names) - 1 - names[::-1].index(key)  # a cell's slot comes last
                managers.append(root.framelocals_manager(key=(key, local_index), source=source,
                                                         example_value=value, guard_manager_enum=plain))
                roots.append("L")
            elif step in ("G", "M"):
                if step not in dict_roots:
                    scope = f_globals if step == "G" else sys.modules
                    dict_roots[step] = root.globals_dict_manager(f_globals=scope, source=f"artcache_{step}",
                                                                 example_value=scope, guard_manager_enum=plain)
                managers.append(dict_roots[step].dict_getitem_manager(key=key, source=source, example_value=value,
                                                                      guard_manager_enum=plain))
                roots.append(step)
            elif step == "a":
                managers.append(managers[parent].getattr_manager(attr=key, source=source, example_value=value,
                                                                 guard_manager_enum=plain))
                roots.append(roots[parent])
            elif step == "t":
                managers.append(managers[parent].type_manager(source=source, example_value=value,
                                                              guard_manager_enum=plain))
                roots.append(roots[parent])
            elif step == "g":
                managers.append(managers[parent].generic_getattr_manager(attr=key, source=source, example_value=value,
                                                                         guard_manager_enum=plain))
                roots.append(roots[parent])
            elif step in shape_expr.PROPERTY_STEPS:  # read by the shape epilogue, not by an accessor
                managers.append(None)
                roots.append(roots[parent])
            else:
                accessor = "dict_getitem_manager" if isinstance(values[parent], dict) else "getitem_manager"
                managers.append(getattr(managers[parent], accessor)(key=key, source=source, example_value=value,
                                                                     guard_manager_enum=plain))
                roots.append(roots[parent])
        shapes = [check for _, _, check in checks if check[0] == "shape"]
        local_sames: list[tuple[int, int]] = []
        for at, other, check in checks:
            if check[0] == "shape":
                continue
            if check[0] == "same" and other >= 0 and "L" in (roots[at], roots[other]):
                local_sames.append((at, other))  # objects reached from the call's locals: no fixed id
                continue
            if managers[at] is None or (other >= 0 and managers[other] is None):
                raise Unsupported("a check on a tensor property")
            _leaf(managers[at], values[at], check, keep, roots[at], roots[other] if other >= 0 else "",
                  managers[other] if other >= 0 else None)
        if no_aliasing:
            tensors = [managers[at] for at in no_aliasing]
            if any(manager is None for manager in tensors) or not all(
                    type(values[at]) in (torch.Tensor, torch.nn.Parameter) for at in no_aliasing):
                raise Unsupported("no-aliasing on a value that is not a tensor")
            names = [f"artcache_node_{at}" for at in no_aliasing]
            torch._C._dynamo.guards.install_no_tensor_aliasing_guard(tensors, names, ["artcache no aliasing"], None)
    except (Unsupported, TypeError, ValueError, RuntimeError, AttributeError, KeyError) as exc:
        # A check or accessor this torch's guard API does not take: Python checks instead.
        log.debug("artcache: no guard tree (%s: %s)", type(exc).__name__, exc)
        return None
    state = fc.StateCheck()
    root.add_global_state_guard(torch._C._dynamo.guards.GlobalStateGuard(), ["artcache global state"], None)
    root.add_lambda_guard(lambda _: state.holds() and fc.global_hooks_empty(), ["artcache global state (rest)"], None)
    if local_sames:
        root.add_epilogue_lambda_guard(_same_epilogue(nodes, local_sames, f_globals), ["artcache same objects"], None)
    if shapes:
        # Last, as Dynamo runs its own shape guards: every accessor above found its value.
        root.add_epilogue_lambda_guard(_shape_epilogue(nodes, shapes, f_globals), ["artcache shape guards"], None)
    if epilogue is not None:
        root.add_epilogue_lambda_guard(epilogue, ["artcache precompiled frame"], None)
    return wrapper, keep


def _shape_epilogue(nodes: Sequence[tuple[int, str, Any]], shapes: list[list[Any]],
                    f_globals: Mapping[str, Any]) -> Callable[[Any], bool]:
    """One guard for all shape checks (:mod:`artcache.shape_expr`): reads the nodes their
    paths go through from the frame's locals (a mapping, as Dynamo's own shape guards get
    them) and evaluates each check."""
    index = {}
    for at, (parent, step, key) in enumerate(nodes):
        index[at] = (index[parent] if parent >= 0 else ()) + ((step, key, type(key).__name__),)
    at_of = {path: at for at, path in index.items()}

    def slot(path: list[Any]) -> int:
        return at_of[tuple((step, key, type(key).__name__) for step, key in path)]

    evaluators = [shape_expr.evaluator(check[2], slot) for check in shapes]
    resolve = _resolver(nodes, [slot(path) for check in shapes for path in shape_expr.paths(check[2])], f_globals)

    def holds(f_locals: Any) -> bool:
        values = resolve(f_locals)
        return all(holds_one(values) for holds_one in evaluators)

    return holds


def _same_epilogue(nodes: Sequence[tuple[int, str, Any]], pairs: list[tuple[int, int]],
                   f_globals: Mapping[str, Any]) -> Callable[[Any], bool]:
    """One guard for the ``same`` checks between objects reached from the call's locals
    (two paths to one object, as a module and its submodule share a configuration): reads
    both paths from the frame's locals and compares identity.  A path that finds nothing
    fails the check."""
    resolve = _resolver(nodes, [at for pair in pairs for at in pair], f_globals)

    def holds(f_locals: Any) -> bool:
        values = resolve(f_locals)
        return all(values[a] is values[b] and values[a] is not None for a, b in pairs)

    return holds


def _resolver(nodes: Sequence[tuple[int, str, Any]], targets: Sequence[int],
              f_globals: Mapping[str, Any]) -> Callable[[Any], list[Any]]:
    """A function of the frame's locals that resolves the ``targets`` nodes (and the nodes
    they go through); the other values stay None."""
    needed: set[int] = set()
    for at in targets:
        while at >= 0 and at not in needed:
            needed.add(at)
            at = nodes[at][0]
    order = sorted(needed)

    def resolve(f_locals: Any) -> list[Any]:
        values: list[Any] = [None] * len(nodes)
        for at in order:
            parent, step, key = nodes[at]
            values[at] = _step(f_locals if step == "L" else f_globals if step == "G" else sys.modules
                               if step == "M" else values[parent], step, key)
        return values

    return resolve


def _step(obj: Any, step: str, key: Any) -> Any:
    """One step of an access path (None where it finds nothing: a failed shape check)."""
    if step in ("L", "G", "M"):
        return obj.get(key)
    return fc.step_value(obj, step, key, None)


def _leaf(manager: Any, value: Any, check: list[Any], keep: list[Any], root: str, other_root: str,
          other: Any) -> None:
    kind, _, want = check
    parts = [f"artcache {kind}"]
    if kind == "tensor":
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise Unsupported("tensor")
        # Sizes and strides as stored: None where a shape guard checks them (as Dynamo's own).
        manager.add_tensor_match_guard(value, list(want[3]), list(want[4]), "artcache_tensor", parts, None,
                                       type(value), torch._C._dispatch_keys(value))
        offset = want[5]
        manager.add_lambda_guard(lambda t: t.storage_offset() == offset, parts, None)
    elif kind == "eq":
        type_name, constant = want
        if type_name in ("NoneType", "bool"):
            manager.add_id_match_guard(id(constant), parts, None)
        elif type_name in _SCALARS:
            manager.add_type_match_guard(id(_SCALARS[type_name]), parts, None)
            manager.add_equals_match_guard(constant, parts, None)
        else:
            manager.add_lambda_guard(lambda v: fc.constant_form(v) == want, parts, None)
    elif kind == "torch":
        manager.add_lambda_guard(lambda v: fc.torch_constant(v) == want, parts, None)
    elif kind in ("type", "is"):
        named = fc.resolve_named(want)
        if named is None:
            raise Unsupported("unnamed")
        keep.append(named)
        if kind == "type":
            manager.add_type_match_guard(id(named), parts, None)
        else:
            manager.add_id_match_guard(id(named), parts, None)
    elif kind == "absent":
        state = getattr(value, "__dict__", None)
        if type(state) is not dict:
            raise Unsupported("absent")
        manager.get_generic_dict_manager(source="artcache_dict", example_value=state,
                                         guard_manager_enum=torch._dynamo.guards.GuardManagerType.GUARD_MANAGER
                                         ).add_dict_contains_guard(False, want, parts, None)
    elif kind == "contains":
        key, present = want
        if type(value) is dict:  # torch's own dict-key guard, behind an exact type check
            manager.add_type_match_guard(id(dict), parts, None)
            manager.add_dict_contains_guard(present, key, parts, None)
        else:  # a class's namespace (a mapping proxy)
            manager.add_lambda_guard(lambda v: fc.has_key(v, key, present), parts, None)
    elif kind == "hasattr":
        manager.add_lambda_guard(lambda v: hasattr(v, want), parts, None)
    elif kind == "lacks":
        manager.add_lambda_guard(lambda v: not hasattr(v, want), parts, None)
    elif kind == "len":
        if isinstance(value, dict):  # hook dicts are OrderedDicts (not sequences to torch)
            manager.add_dict_length_check_guard(want, parts, None)
        else:
            manager.add_length_check_guard(want, parts, None)
    elif kind == "code":
        manager.add_lambda_guard(fc.code_check(want), parts, None)
    elif kind == "keys":
        manager.add_lambda_guard(lambda v: fc.has_keys(v, want), parts, None)
    elif kind == "same":
        if "L" in (root, other_root) or other is None:
            raise Unsupported("same")
        keep.append(value)
        manager.add_id_match_guard(id(value), parts, None)
        other.add_id_match_guard(id(value), parts, None)
    else:
        raise Unsupported(kind)
