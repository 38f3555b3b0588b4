"""Shape guards of a precompiled frame as plain data, and the small interpreter that
evaluates them (the precompile tier, :mod:`artcache.frames`).

A frame compiled with symbolic shapes holds only for the sizes its ShapeEnv guarded:
bounds (``2 <= s0``), relations between sizes (``s0 // 3 <= s1``, duck-sized equalities),
divisibility (``s0 % 2 == 0``), strides in terms of sizes.  The record translates each one
(:mod:`artcache._torch.shape_guards`) to an expression tree of lists:

=======================  ==================================================================
``["int", n]``           an int constant (``|n| < 2**62``)
``["p", path]``          the int read at an access path; the path ends in a tensor
                         property step, ``["size", i]``, ``["stride", i]`` or
                         ``["offset", 0]``
``[op, a, b]``           ``+ - * // %`` (Python's floor semantics, as sympy's ``FloorDiv``
                         and ``PythonMod``), ``== != < <= > >=``
``[op, a, b, ...]``      ``min max`` (2 to 8 operands), ``and or`` (2 to 64)
``[op, a]``              ``neg abs not``
``["arg", i]``           the ``i``-th of a list of ints (only in a graph entry's own
                         guards, evaluated on the graph's int inputs; never stored)
=======================  ==================================================================

A stored expression is hostile: :func:`is_expr` accepts only these forms, with at most
``MAX_DEPTH`` levels and ``MAX_NODES`` nodes, before anything reads it; evaluation is a
walk of the tree with int arithmetic (nothing is parsed, nothing ``eval``'d), every
intermediate value bounded (``MAX_INT``): a value out of bounds, a division by zero or a
path that reads no int makes the guard fail (the frame goes through Dynamo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_DEPTH = 24
MAX_NODES = 256
MAX_INT = 2**62
PROPERTY_STEPS = ("size", "stride", "offset")

_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "==": lambda a, b: int(a == b),
    "!=": lambda a, b: int(a != b),
    "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b),
    ">": lambda a, b: int(a > b),
    ">=": lambda a, b: int(a >= b),
}
_UNARY = {"neg": lambda a: -a, "abs": abs, "not": lambda a: int(not a)}
_NARY = {"min": (min, 8), "max": (max, 8), "and": (lambda *v: int(all(v)), MAX_NODES),
         "or": (lambda *v: int(any(v)), MAX_NODES)}  # and/or: bounded by the node count only


class ShapeError(Exception):
    """An expression that cannot be evaluated on these values (internal: a failed guard)."""


def is_expr(value: Any, is_path: Callable[[Any], bool], args: int = 0, max_nodes: int = MAX_NODES) -> bool:
    """Whether ``value`` is a well-formed expression within the bounds (``is_path``
    validates the access paths of its leaves; ``["arg", i]`` leaves need ``i < args``;
    a graph entry's guards, one conjunction over all its symbols, may take more nodes)."""
    count = [0]
    n_args = args

    def ok(node: Any, depth: int) -> bool:
        count[0] += 1
        if count[0] > max_nodes or depth > MAX_DEPTH or type(node) is not list or not node:
            return False
        op, args = node[0], node[1:]
        if op == "int":
            return len(args) == 1 and type(args[0]) is int and -MAX_INT < args[0] < MAX_INT
        if op == "arg":
            return len(args) == 1 and type(args[0]) is int and 0 <= args[0] < n_args
        if op == "p":
            return (len(args) == 1 and is_path(args[0]) and type(args[0][-1]) is list
                    and args[0][-1][0] in PROPERTY_STEPS)
        if op in _BINARY:
            arity_ok = len(args) == 2
        elif op in _UNARY:
            arity_ok = len(args) == 1
        elif op in _NARY:
            arity_ok = 2 <= len(args) <= (max_nodes if op in ("and", "or") else _NARY[op][1])
        else:
            return False
        return arity_ok and all(ok(a, depth + 1) for a in args)

    return type(value) is list and ok(value, 0)


def paths(expr: list[Any]) -> list[list[Any]]:
    """The access paths an (already validated) expression reads, in order."""
    if expr[0] == "p":
        return [expr[1]]
    if expr[0] in ("int", "arg"):
        return []
    return [p for arg in expr[1:] for p in paths(arg)]


def evaluator(expr: list[Any], slot: Callable[[list[Any]], int]) -> Callable[[list[Any]], bool]:
    """A function of a list of resolved values that says whether the (validated)
    expression holds; ``slot(path)`` gives the index in that list where each ``["p", path]``
    leaf's value is found (an ``["arg", i]`` leaf reads index ``i``)."""
    compiled = _compile(expr, slot)

    def holds(values: list[Any]) -> bool:
        try:
            return bool(compiled(values))
        except ShapeError:
            return False

    return holds


def _compile(node: list[Any], slot: Callable[[list[Any]], int]) -> Callable[[list[Any]], int]:
    op, args = node[0], node[1:]
    if op == "int":
        constant = args[0]
        return lambda values: constant  # type: ignore[no-any-return]
    if op in ("p", "arg"):
        at = slot(args[0]) if op == "p" else args[0]

        def read(values: list[Any]) -> int:
            value = values[at]
            if type(value) is not int:
                raise ShapeError("not an int")
            return value  # type: ignore[no-any-return]

        return read
    parts = [_compile(a, slot) for a in args]
    if op in _UNARY:
        fn1 = _UNARY[op]
        (only,) = parts
        return lambda values: _bounded(fn1(only(values)))
    if op in _BINARY:
        fn2 = _BINARY[op]
        left, right = parts
        if op in ("//", "%"):
            def divide(values: list[Any]) -> int:
                a, b = left(values), right(values)
                if b == 0:
                    raise ShapeError("division by zero")
                return _bounded(fn2(a, b))

            return divide
        return lambda values: _bounded(fn2(left(values), right(values)))
    fn = _NARY[op][0]
    if op in ("and", "or"):  # short-circuit, as the guards Dynamo evaluates
        stop = op == "or"
        return lambda values: int(stop) if any(bool(p(values)) is stop for p in parts) else int(not stop)
    return lambda values: _bounded(fn(*(p(values) for p in parts)))


def _bounded(value: int) -> int:
    if not -MAX_INT < value < MAX_INT:
        raise ShapeError("out of bounds")
    return value


def text(expr: list[Any], path_text: Callable[[list[Any]], str]) -> str:
    """The expression as readable infix text (for ``artcache inspect``; never parsed)."""
    op, args = expr[0], expr[1:]
    if op == "int":
        return str(args[0])
    if op == "p":
        return path_text(args[0])
    if op == "arg":
        return f"t{args[0]}"
    if op in _BINARY:
        return f"({text(args[0], path_text)} {op} {text(args[1], path_text)})"
    if op == "neg":
        return f"-{text(args[0], path_text)}"
    if op in ("and", "or"):
        return "(" + f" {op} ".join(text(a, path_text) for a in args) + ")"
    return f"{op}(" + ", ".join(text(a, path_text) for a in args) + ")"
