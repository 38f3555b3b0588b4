"""A frame entry of the precompile tier (:mod:`artcache.frames`) as plain data: its
fields, their validation (every byte from a store is hostile: a document is checked field
by field before anything reads it), readable text for ``artcache inspect``, and the
structure of a frame's return value in terms of its graph's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import shape_expr
from .errors import CorruptEntryError, NotPrecompilable

# The frame-entry document's version, a key factor of every frame entry: entries of another
# version are never looked up.
FRAME_SCHEMA = 3

CONSTANTS = (type(None), bool, int, float, str)
_MAX_STRUCTURE_DEPTH = 16


# -- plain-data checks, valid for entries from a store -------------------------------------
def _is_path(path: Any) -> bool:
    if type(path) is not list or not path or len(path) > 64:
        return False
    root = path[0]
    if type(root) is not list or len(root) != 2 or root[0] not in ("L", "G", "M") or type(root[1]) is not str:
        return False
    *steps, last = path[1:] or [None]
    if last is not None and type(last) is list and len(last) == 2 and last[0] in shape_expr.PROPERTY_STEPS:
        # A tensor property (a size, a stride, the storage offset) ends a path: a graph's
        # SymInt input or a shape guard's operand.
        if type(last[1]) is not int or not 0 <= last[1] < 64:
            return False
    elif last is not None:
        steps.append(last)
    return all(type(s) is list and len(s) == 2 and ((s[0] == "a" and type(s[1]) is str)
               or (s[0] == "i" and type(s[1]) in (str, int)) or s == ["t", ""]
               or (s[0] == "g" and type(s[1]) is str)) for s in steps)


def _is_name(value: Any) -> bool:
    return type(value) is list and len(value) == 2 and all(type(v) is str for v in value)


CHECK_ARG = {
    "eq": lambda v: type(v) is list and len(v) == 2 and type(v[0]) is str,  # compared whole, never interpreted
    "tensor": lambda v: type(v) is list and len(v) == 8,
    "type": _is_name,
    "is": _is_name,
    "absent": lambda v: type(v) is str,
    "hasattr": lambda v: type(v) is str,
    "lacks": lambda v: type(v) is str,
    "len": lambda v: type(v) is int,
    "torch": _is_name,
    "same": _is_path,
    "code": lambda v: type(v) is str and keys_is_digest(v),  # a code object's structural digest
    "keys": lambda v: type(v) is list and all(type(k) in (str, int) for k in v),
    # [key, present]: whether a dict has the key (a ``**kwargs`` read with .get or ``in``)
    "contains": lambda v: type(v) is list and len(v) == 2 and type(v[0]) in (str, int) and type(v[1]) is bool,
    "shape": lambda v: shape_expr.is_expr(v, _is_path),  # a ShapeEnv guard (artcache.shape_expr)
}


def _is_structure(value: Any, depth: int = 0) -> bool:
    if type(value) is not list or not value or depth > _MAX_STRUCTURE_DEPTH:
        return False
    kind, rest = value[0], value[1:]
    if kind in ("o", "in"):
        return len(rest) == 1 and type(rest[0]) is int and rest[0] >= 0
    if kind == "c":
        return len(rest) == 1 and type(rest[0]) in CONSTANTS
    if kind in ("tuple", "list"):
        return len(rest) == 1 and type(rest[0]) is list and all(_is_structure(v, depth + 1) for v in rest[0])
    if kind == "dict":
        return len(rest) == 1 and type(rest[0]) is list and all(
            type(kv) is list and len(kv) == 2 and type(kv[0]) is str and _is_structure(kv[1], depth + 1) for kv in rest[0])
    return False


# The graph key of a chain step whose frame Dynamo converted without a graph (it only
# calls functions of its own, as a decorator's wrapper does): the step runs its code alone.
NO_GRAPH = ""


@dataclass(frozen=True)
class FrameEntry:
    """What a precompiled frame needs, as plain data (see the module docstring)."""

    guards: list[list[Any]]
    state: str
    inputs: list[list[list[Any]]]
    output: list[Any]
    graph_key: str
    cpu_code: bool
    traced: list[list[str]]
    wrapped: bool  # the frame Dynamo traced is torch's wrapper around fn (fc.is_inline_wrapper)
    # Per graph input, the first input sharing its storage: a call whose inputs alias
    # differently (the same tensor twice, views of one base) is refused, whatever guards say.
    storage: list[int]

    def plain(self) -> dict[str, Any]:
        return {"schema": FRAME_SCHEMA, "guards": self.guards, "state": self.state, "inputs": self.inputs,
                "output": self.output, "graph_key": self.graph_key, "cpu_code": self.cpu_code, "traced": self.traced,
                "wrapped": self.wrapped, "storage": self.storage}

    @classmethod
    def from_plain(cls, doc: Any) -> FrameEntry:
        """Validate a decoded document field by field; CorruptEntryError on anything else."""
        ok = (type(doc) is dict and doc.get("schema") == FRAME_SCHEMA
              and type(doc.get("guards")) is list and all(
                  type(g) is list and len(g) == 3 and g[0] in CHECK_ARG and _is_path(g[1]) and CHECK_ARG[g[0]](g[2])
                  for g in doc["guards"])
              and type(doc.get("state")) is str
              and type(doc.get("inputs")) is list and all(_is_path(p) for p in doc["inputs"])
              and _is_structure(doc.get("output"))
              and type(doc.get("graph_key")) is str and (keys_is_digest(doc["graph_key"]) or (
                  doc["graph_key"] == NO_GRAPH and doc.get("inputs") == []))
              and type(doc.get("cpu_code")) is bool and type(doc.get("wrapped")) is bool
              and type(doc.get("storage")) is list and len(doc["storage"]) == len(doc["inputs"])
              and all(type(i) is int for i in doc["storage"])
              and type(doc.get("traced")) is list and all(
                  type(t) is list and len(t) == 3 and all(type(v) is str for v in t) for t in doc["traced"]))
        if not ok:
            raise CorruptEntryError("bad frame entry document")
        return cls(doc["guards"], doc["state"], doc["inputs"], doc["output"], doc["graph_key"], doc["cpu_code"],
                   doc["traced"], doc["wrapped"], doc["storage"])


def keys_is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def path_text(path: list[list[Any]]) -> str:
    (kind, name), text = path[0], ""
    text = {"L": f"L[{name!r}]", "G": f"G[{name!r}]", "M": f"module {name}"}[kind]
    for step, key in path[1:]:
        if step in ("t", "g"):
            text = f"type({text})" if step == "t" else f"object.__getattribute__({text}, {key!r})"
            continue
        text += (f".{key}" if step == "a" else f"[{key!r}]" if step == "i" else
                 ".storage_offset()" if step == "offset" else f".{step}()[{key}]")
    return text


def guard_text(check: list[Any]) -> str:
    want = (" ".join(str(v) for v in check[2]) if check[0] == "tensor" else
            path_text(check[2]) if check[0] == "same" else
            shape_expr.text(check[2], path_text) if check[0] == "shape" else check[2])
    return f"{check[0]:<7} {path_text(check[1])} {want}"


def build_output(structure: list[Any], outputs: Any, inputs: list[Any]) -> Any:
    kind, arg = structure
    if kind == "o":
        return outputs[arg]
    if kind == "in":
        return inputs[arg]
    if kind == "c":
        return arg
    if kind == "tuple":
        return tuple(build_output(s, outputs, inputs) for s in arg)
    if kind == "list":
        return [build_output(s, outputs, inputs) for s in arg]
    return {k: build_output(s, outputs, inputs) for k, s in arg}


def output_structure(value: Any, outputs: Any, inputs: list[Any], depth: int = 0) -> list[Any]:
    """How the frame's return value ``value`` is made of the graph's ``outputs`` (by
    identity), its ``inputs`` and constants; NotPrecompilable for anything else."""
    if depth > _MAX_STRUCTURE_DEPTH:
        raise NotPrecompilable("output", "nested too deep")
    for i, out in enumerate(outputs):
        if value is out:
            return ["o", i]
    for i, arg in enumerate(inputs):
        if value is arg:
            return ["in", i]
    if type(value) in CONSTANTS and not (type(value) is float and value != value):
        return ["c", value]
    if type(value) in (tuple, list):
        return [type(value).__name__, [output_structure(v, outputs, inputs, depth + 1) for v in value]]
    if type(value) is dict and all(type(k) is str for k in value):
        return ["dict", [[k, output_structure(v, outputs, inputs, depth + 1)] for k, v in value.items()]]
    raise NotPrecompilable("output", f"returns a {type(value).__name__} not made of graph outputs")
