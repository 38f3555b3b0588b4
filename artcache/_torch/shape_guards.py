"""A frame's ShapeEnv guards, translated at record time to the plain-data expressions of
:mod:`artcache.shape_expr` (the precompile tier, :mod:`artcache.frames`).

Dynamo's ``SHAPE_ENV`` guard holds what ``ShapeEnv.produce_guards`` made of the frame's
symbols: the bounds of each size (``2 <= L['x'].size()[0]``, the 0/1 specialization of a
size marked dynamic), the guards recorded while tracing and compiling (``(L['x'].size()[0]
% 2) == 0``), duck-sized equalities between inputs (``L['y'].size()[0] ==
L['x'].size()[0]``) and strides in terms of sizes (``L['x'].stride()[0] ==
L['x'].size()[1]``), every symbol written as the access path it was read from.  Torch
prints each as a Python expression (the guard's ``code_list``, set by the guard builder
before ``guard_filter_fn`` sees it).  :func:`translate` parses that text with :mod:`ast`
(parsed, never evaluated; the text is torch's own, in the process that traced) and keeps
only what it knows: int constants, ``+ - * // %``, unary minus, ``not``, comparisons
(chains included), ``and``/``or``, ``min``/``max``/``abs``, and operands that read a
tensor's ``size()[i]``, ``stride()[i]`` or ``storage_offset()`` through a path of locals
(``L[...]``), globals (``G[...]``), attributes and constant subscripts.  Anything else
raises :class:`NotPrecompilable` with the reason ``shape-guard``.

A tensor guard compares a dimension marked dynamic with nothing (its size is a symbol):
:func:`dynamic_dims` reads which of an input's sizes and strides are symbolic from the
output graph, so that the tensor check leaves them to the shape guards, as Dynamo's does.

Checked on torch 2.13 (CPU).
"""

from __future__ import annotations

import ast
from typing import Any

import torch

from .. import shape_expr
from ..errors import NotPrecompilable
from ..frame_entry import CHECK_ARG

_MAX_TEXT = 4096
# A graph entry's guards are one conjunction over all of the graph's symbols.
_MAX_GRAPH_TEXT, _MAX_GRAPH_NODES = 65536, 8192
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}
_CMPOPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_CALLS = {"min": (2, 8), "max": (2, 8), "abs": (1, 1)}


def translate(guard: Any) -> list[list[Any]]:
    """The checks (``["shape", first path, expression]``) of Dynamo's ``SHAPE_ENV`` guard
    ``guard`` (a ``torch._guards.Guard``); NotPrecompilable for anything not translated."""
    if not hasattr(guard, "code_list"):
        raise NotPrecompilable("shape-guard", "this torch's SHAPE_ENV guard has no code_list")
    checks: list[list[Any]] = []
    seen: set[str] = set()
    for code in guard.code_list or ():
        if type(code) is not str or len(code) > _MAX_TEXT:
            raise NotPrecompilable("shape-guard", "a guard's text is not a short string")
        if code in seen:
            continue
        seen.add(code)
        try:
            tree = ast.parse(code, mode="eval")
        except SyntaxError as exc:
            raise NotPrecompilable("shape-guard", f"unparsable: {code}") from exc
        expr = _expr(tree.body, code)
        if not CHECK_ARG["shape"](expr):
            raise NotPrecompilable("shape-guard", f"too large: {code[:200]}")
        read = shape_expr.paths(expr)
        if read:
            checks.append(["shape", read[0], expr])
        elif not shape_expr.evaluator(expr, lambda path: 0)([]):  # reads nothing: a constant
            raise NotPrecompilable("shape-guard", f"a constant guard that does not hold: {code[:200]}")
    return checks


def graph_guards_hold(code: Any, ints: list[int]) -> bool:
    """Whether a graph entry's Inductor shape guards (``guards_expr``, torch's text over
    ``L['t0']``, ``L['t1']``... standing for the graph's SymInt inputs in order) hold for a
    replayed frame's int inputs ``ints``.  The text comes from a store: it is parsed
    (bounded in length), translated as :func:`translate` translates, with ``L['t<i>']``
    as the ``i``-th int, and evaluated by :mod:`artcache.shape_expr`; never ``eval``'d.
    Anything not translated, or not well formed, is a guard that fails."""
    if type(code) is not str or len(code) > _MAX_GRAPH_TEXT:
        return False
    try:
        expr = _expr(ast.parse(code, mode="eval").body, code, graph_args=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, NotPrecompilable):
        return False
    if not shape_expr.is_expr(expr, lambda path: False, args=len(ints), max_nodes=_MAX_GRAPH_NODES):
        return False
    return shape_expr.evaluator(expr, lambda path: 0)(list(ints))


def _expr(node: ast.AST, code: str, graph_args: bool = False) -> list[Any]:
    if graph_args:  # a graph entry's guards name its int inputs L['t0'], L['t1'], ...
        arg = _graph_arg(node)
        if arg is not None:
            return ["arg", arg]
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return ["int", node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return [_BINOPS[type(node.op)], _expr(node.left, code, graph_args), _expr(node.right, code, graph_args)]
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return ["neg", _expr(node.operand, code, graph_args)]
        if isinstance(node.op, ast.UAdd):
            return _expr(node.operand, code, graph_args)
        if isinstance(node.op, ast.Not):
            return ["not", _expr(node.operand, code, graph_args)]
    if isinstance(node, ast.BoolOp):
        return ["and" if isinstance(node.op, ast.And) else "or", *(_expr(v, code, graph_args) for v in node.values)]
    if isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
        operands = [_expr(v, code, graph_args) for v in [node.left, *node.comparators]]
        pairs = [[_CMPOPS[type(op)], operands[i], operands[i + 1]] for i, op in enumerate(node.ops)]
        return pairs[0] if len(pairs) == 1 else ["and", *pairs]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS
            and not node.keywords):
        low, high = _CALLS[node.func.id]
        if low <= len(node.args) <= high:
            return [node.func.id, *(_expr(a, code, graph_args) for a in node.args)]
    path = None if graph_args else _property_path(node)
    if path is not None:
        return ["p", path]
    raise NotPrecompilable("shape-guard", f"{type(node).__name__} in {code[:200]}")


def _graph_arg(node: ast.AST) -> int | None:
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "L"
            and isinstance(node.slice, ast.Constant) and type(node.slice.value) is str):
        name = node.slice.value
        if len(name) > 1 and name[0] == "t" and name[1:].isdigit() and len(name) < 8:
            return int(name[1:])
    return None


def _property_path(node: ast.AST) -> list[Any] | None:
    """``base.size()[i]``, ``base.stride()[i]`` or ``base.storage_offset()`` as a path."""
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call) and not node.value.args
            and not node.value.keywords and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr in ("size", "stride") and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int):
        base = _path(node.value.func.value)
        return None if base is None else [*base, [node.value.func.attr, node.slice.value]]
    if (isinstance(node, ast.Call) and not node.args and not node.keywords and isinstance(node.func, ast.Attribute)
            and node.func.attr == "storage_offset"):
        base = _path(node.func.value)
        return None if base is None else [*base, ["offset", 0]]
    return None


def _path(node: ast.AST) -> list[list[Any]] | None:
    """``L['x']``, ``G['w']``, attributes and constant subscripts as an access path."""
    if isinstance(node, ast.Attribute):
        base = _path(node.value)
        return None if base is None else [*base, ["a", node.attr]]
    if not isinstance(node, ast.Subscript) or not isinstance(node.slice, ast.Constant):
        return None
    key = node.slice.value
    if isinstance(node.value, ast.Name) and node.value.id in ("L", "G"):
        # Dynamo's own globals (imported modules and the like) are named with a leading "__".
        return [[node.value.id, key]] if type(key) is str and not key.startswith("__") else None
    base = _path(node.value)
    return None if base is None or type(key) not in (str, int) else [*base, ["i", key]]


def dynamic_dims(output: Any) -> dict[Any, tuple[list[int | None], list[int | None]]]:
    """Per source of a graph input tensor, its sizes and strides with ``None`` where the
    trace made them symbolic (``OutputGraph.input_source_to_sizes_strides``, what Dynamo's
    tensor guards compare).  Only sources with a symbolic size or stride are listed."""
    found = getattr(output, "input_source_to_sizes_strides", None) or {}
    out = {}
    for source, facts in found.items():
        sizes = [_concrete(v) for v in facts.get("size", ())]
        strides = [_concrete(v) for v in facts.get("stride", ())]
        if None in sizes or None in strides:
            out[source] = (sizes, strides)
    return out


def _concrete(value: Any) -> int | None:
    if isinstance(value, torch.SymInt):
        as_int = value.node.maybe_as_int()
        return None if as_int is None else int(as_int)
    return int(value)
