"""Python code objects as plain data, and what Dynamo's transformed bytecode of a frame
names, for the precompile tier's frames with graph breaks (:mod:`artcache.frame_resume`).

A frame with a graph break runs, after Dynamo, as *transformed bytecode*: it calls the
first compiled graph (a global ``__compiled_fn_*``), runs the unsupported instruction in
plain Python, then calls a *resume function* (a global ``__resume_at_*``) whose code
Dynamo generated from the frame's own code and compiles as a frame of its own.  Both code
objects are kept here as plain fields (:func:`encode`): the bytecode, line and exception
tables as hex strings, names as strings, constants as tagged lists (plain scalars, bytes,
tuples, frozensets, nested code).  Nothing is pickled or marshalled: a document is checked
field by field (:func:`check`), and a ``CodeType`` is built from it (:func:`decode`) only
after the entry that holds it passed the store's trust and signature checks (an entry is a
program: README, "Security model").  A malformed document is a ``CorruptEntryError``.

Also here: the global state a frame Dynamo converts saw on entry (:func:`frame_state`),
the bytecode hook Dynamo calls with each frame's original and transformed code
(``torch._dynamo.convert_frame.register_bytecode_hook``), and which globals a code object
loads.  Checked on torch 2.13 with Python 3.11 and torch 2.11 with Python 3.12: both
have the same code fields and ``CodeType`` constructor, and the opcodes accepted are the
running interpreter's; a document of another Python is refused (its ``python`` field),
and another interpreter encodes nothing (:func:`supported`).
"""

from __future__ import annotations

import contextlib
import dis
import json
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import CorruptEntryError, NotPrecompilable
from . import frame_capture as fc

# The interpreter whose code layout the fields describe: a document of another is refused.
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
_MAX_BYTES = 1 << 16  # bytecode, line table and exception table, each
_MAX_ITEMS = 4096  # names, variables, constants per code object
_MAX_DEPTH = 8  # nested code and constant containers
_INTS = ("argcount", "posonlyargcount", "kwonlyargcount", "nlocals", "stacksize", "flags", "firstlineno")
_BYTES = ("code", "linetable", "exceptiontable")
_NAMES = ("names", "varnames", "freevars", "cellvars")
_STRS = ("filename", "name", "qualname")
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL"})
# This interpreter's opcodes; 0 is the CACHE entries after an instruction.  Python 3.12's
# INSTRUMENTED_* opcodes (written in place by sys.monitoring, never in co_code) and
# pseudo-instructions (numbered above 255) are not bytecode a document may hold.
_OPCODES = frozenset(op for name, op in dis.opmap.items() if op < 256 and not name.startswith("INSTRUMENTED_")) | {0}
_PYTHONS = ((3, 11), (3, 12))


def supported() -> bool:
    """Whether this interpreter's code objects have the fields the codec writes (3.11, 3.12)."""
    return sys.version_info[:2] in _PYTHONS


def encode(code: types.CodeType, depth: int = 0) -> dict[str, Any]:
    """``code`` as plain fields; NotPrecompilable for a constant that is not plain data."""
    if depth > _MAX_DEPTH:
        raise NotPrecompilable("bytecode", "code nested too deep")
    doc: dict[str, Any] = {"python": PYTHON}
    doc.update({name: getattr(code, f"co_{name}") for name in _INTS})
    doc.update({name: getattr(code, f"co_{name}").hex() for name in _BYTES})
    doc.update({name: list(getattr(code, f"co_{name}")) for name in _NAMES})
    doc.update({name: getattr(code, f"co_{name}") for name in _STRS})
    doc["consts"] = [_encode_const(c, depth) for c in code.co_consts]
    if any(len(doc[name]) > 2 * _MAX_BYTES for name in _BYTES):
        raise NotPrecompilable("bytecode", "code too large")
    return doc


def _encode_const(value: Any, depth: int) -> list[Any]:
    if depth > _MAX_DEPTH:
        raise NotPrecompilable("bytecode", "constant nested too deep")
    if value is None or value is Ellipsis:
        return ["none" if value is None else "ellipsis"]
    if type(value) in (bool, int, float, str):
        return [type(value).__name__, value]
    if type(value) is complex:
        return ["complex", value.real, value.imag]
    if type(value) is bytes:
        return ["bytes", value.hex()]
    if type(value) in (tuple, frozenset):
        items = sorted(value, key=repr) if type(value) is frozenset else value
        return [type(value).__name__, [_encode_const(v, depth + 1) for v in items]]
    if type(value) is types.CodeType:
        return ["code", encode(value, depth + 1)]
    raise NotPrecompilable("bytecode-const", type(value).__name__)


def _is_name(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= 256


def _hex(value: Any) -> bool:
    if type(value) is not str or len(value) > 2 * _MAX_BYTES or len(value) % 2:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def check(doc: Any, depth: int = 0) -> None:
    """Validate a stored code document (every field's type, bounds and the opcodes);
    CorruptEntryError on anything else."""
    fields = {"python", "consts", *_INTS, *_BYTES, *_NAMES, *_STRS}
    ok = (depth <= _MAX_DEPTH and type(doc) is dict and set(doc) == fields and doc["python"] == PYTHON
          and all(type(doc[n]) is int and 0 <= doc[n] < (1 << 31) for n in _INTS)
          and all(_hex(doc[n]) for n in _BYTES)
          and all(type(doc[n]) is list and len(doc[n]) <= _MAX_ITEMS and all(_is_name(v) for v in doc[n])
                  for n in _NAMES)
          and all(type(doc[n]) is str and len(doc[n]) <= 4096 for n in _STRS)
          and type(doc["consts"]) is list and len(doc["consts"]) <= _MAX_ITEMS)
    if not ok:
        raise CorruptEntryError("bad code document")
    code = bytes.fromhex(doc["code"])
    if not code or len(code) % 2 or any(op not in _OPCODES for op in code[::2]):
        raise CorruptEntryError("bad bytecode")
    for const in doc["consts"]:
        _check_const(const, depth)


def _check_const(const: Any, depth: int) -> None:
    if type(const) is not list or not const or depth > _MAX_DEPTH:
        raise CorruptEntryError("bad code constant")
    tag, rest = const[0], const[1:]
    if tag in ("none", "ellipsis") and not rest:
        return
    if len(rest) == 1 and tag in ("bool", "int", "float", "str") and type(rest[0]).__name__ == tag:
        return
    if tag == "complex" and len(rest) == 2 and all(type(v) is float for v in rest):
        return
    if tag == "bytes" and len(rest) == 1 and _hex(rest[0]):
        return
    if tag in ("tuple", "frozenset") and len(rest) == 1 and type(rest[0]) is list and len(rest[0]) <= _MAX_ITEMS:
        for item in rest[0]:
            _check_const(item, depth + 1)
        return
    if tag == "code" and len(rest) == 1:
        check(rest[0], depth + 1)
        return
    raise CorruptEntryError("bad code constant")


def decode(doc: dict[str, Any]) -> types.CodeType:
    """A code object from a document :func:`check` accepted (call it on trusted entries
    only: the bytecode runs).  CorruptEntryError when Python refuses the fields."""
    check(doc)
    try:
        return types.CodeType(
            *(doc[n] for n in ("argcount", "posonlyargcount", "kwonlyargcount", "nlocals", "stacksize", "flags")),
            bytes.fromhex(doc["code"]), tuple(_decode_const(c) for c in doc["consts"]), tuple(doc["names"]),
            tuple(doc["varnames"]), doc["filename"], doc["name"], doc["qualname"], doc["firstlineno"],
            bytes.fromhex(doc["linetable"]), bytes.fromhex(doc["exceptiontable"]), tuple(doc["freevars"]),
            tuple(doc["cellvars"]))
    except (TypeError, ValueError) as exc:
        raise CorruptEntryError(f"bad code document: {exc}") from exc


def _decode_const(const: list[Any]) -> Any:
    tag = const[0]
    if tag == "none":
        return None
    if tag == "ellipsis":
        return Ellipsis
    if tag in ("bool", "int", "float", "str"):
        return const[1]
    if tag == "complex":
        return complex(const[1], const[2])
    if tag == "bytes":
        return bytes.fromhex(const[1])
    if tag == "tuple":
        return tuple(_decode_const(c) for c in const[1])
    if tag == "frozenset":
        return frozenset(_decode_const(c) for c in const[1])
    return decode(const[1])  # "code"


def global_names(code: types.CodeType) -> set[str]:
    """The names ``code`` loads, stores or deletes as globals (nested code not included)."""
    return {inst.argval for inst in dis.get_instructions(code) if inst.opname in _GLOBAL_OPS}


def stored_globals(code: types.CodeType) -> set[str]:
    return {inst.argval for inst in dis.get_instructions(code) if inst.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")}


def renamed(code: types.CodeType, names: dict[str, str]) -> types.CodeType:
    """``code`` with the global names in ``names`` replaced (only ``co_names`` changes)."""
    return code.replace(co_names=tuple(names.get(n, n) for n in code.co_names))


def unwrapped(value: Any) -> Any:
    """What Dynamo's wrapper of a compiled graph wraps (``functools.wraps``'s ``__wrapped__``)."""
    for _ in range(8):
        inner = getattr(value, "__wrapped__", None)
        if inner is None:
            return value
        value = inner
    return value


@contextlib.contextmanager
def bytecode_hook(hook: Callable[[types.CodeType, types.CodeType], None]) -> Iterator[bool]:
    """Call ``hook(code, transformed)`` for each frame Dynamo converts inside the block;
    yields False when this torch has no bytecode hook (nothing is called)."""
    from torch._dynamo import convert_frame

    register = getattr(convert_frame, "register_bytecode_hook", None)
    if register is None:
        yield False
        return

    def note(code: types.CodeType, out: types.CodeType) -> None:
        hook(code, out)  # returns None: Dynamo keeps its own code

    handle = register(note)
    try:
        yield True
    finally:
        handle.remove()


def conversion_output(code: types.CodeType) -> tuple[list[types.CodeType], dict[str, Any]] | None:
    """Inside a bytecode hook: the code objects Dynamo traced while it converted the frame
    of ``code`` (the frame's own left out) and the frame's globals (where Dynamo installed
    what its transformed code names), read from the converting function's
    ``tracer_output`` local (``convert_frame._compile``'s ``DynamoTracerOutput``: its
    ``output_graph.traced_code`` and ``f_globals``).  A frame that compiled no graph has
    no backend call to read them from.  Checked on torch 2.13 and 2.11; None when no caller
    within a few frames holds it (another torch)."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return None
        found = frame.f_locals.get("tracer_output")
        traced = getattr(getattr(found, "output_graph", None), "traced_code", None)
        f_globals = getattr(found, "f_globals", None)
        if isinstance(traced, list) and isinstance(f_globals, dict):
            return [c for c in traced if c is not code], f_globals
        frame = frame.f_back
    return None


def frame_state() -> str:
    """:func:`~artcache._torch.frame_capture.global_state` as the frame Dynamo is converting
    saw it on entry: read from inside the conversion (the guard filter), where Dynamo has
    switched torch-function handling off, the C++ global state is the one Dynamo saved when
    it started converting the frame (``convert_frame.initial_global_state``, what its
    global-state guard compares).  Empty when this torch does not keep it."""
    from torch._dynamo import convert_frame

    initial = getattr(convert_frame, "initial_global_state", None)
    if initial is None or not hasattr(initial, "__getstate__"):
        return ""
    state = json.loads(fc.global_state())
    state[0] = json.loads(initial.__getstate__())
    return json.dumps(state, sort_keys=True)
