"""Digests of user code that a trace can run: a custom op's kernels, its autograd formula,
its fake kernel, decompositions and lowerings registered for it.

Torch's version pins torch's own code; user code is pinned by nothing, so the key carries
a digest of it.  A function is identified by what decides its behaviour:

* its code object, structurally: bytecode, constants (nested code objects recursively),
  names, argument layout.  Not its file name or line numbers (paths never enter keys, and
  moving a function down a file does not change it), and not its source text (comments
  and formatting do not change it either).  The Python version is an environment factor,
  so bytecode is comparable wherever a key can match.
* the values it reads from outside: module-level globals named in its code (and
  attributes of user modules it reads through such a global), closure cells, defaults.
  Those values are digested the same way, recursively: a helper function, a constant
  tensor, a config dataclass, a dict of scales.

Code of installed packages (torch, the standard library, anything under site-packages) is
named, not walked: its identity is the package's name and version, and walking it would
cost far more than the compile it keys.  Values are walked to a bounded depth and count;
past either bound the digest raises :class:`Uncacheable`, so the graph is compiled
without the cache instead of keyed on an incomplete digest.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import sys
import sysconfig
import types
from collections.abc import Mapping
from typing import Any

import torch

from .errors import Uncacheable

# Bounds on one digest: nesting of values, and the number of values visited.
MAX_DEPTH = 12
MAX_VALUES = 20_000
# Tensors read by user code are hashed by content up to this many bytes in all; more makes
# the graph uncacheable (hashing gigabytes on every lookup would cost more than compiling).
MAX_TENSOR_BYTES = 64 * 1024 * 1024
# Plain containers longer than this are uncacheable for the same reason.
MAX_ITEMS = 100_000


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(sorted(r for r in roots if r))


def _installed_module(name: str | None) -> bool:
    """Whether module ``name`` ships with Python or an installed package (pinned by a
    version), as opposed to the user's own code."""
    if not name:
        return False
    top = name.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in ("torch", "builtins", "_operator", "sympy", "numpy"):
        return True
    module = sys.modules.get(name) or sys.modules.get(top)
    path = getattr(module, "__file__", None)
    return bool(path) and str(path).startswith(_installed_roots())


def installed_module(name: str | None) -> bool:
    """Whether module ``name`` is installed code (named by its package, never walked)."""
    return _installed_module(name)


def _package_identity(name: str) -> str:
    top = name.split(".", 1)[0]
    return f"{top} {package_version(top)}"


def package_version(top: str) -> str:
    """The version of the installed package whose top-level module is ``top``: its
    ``__version__``, else its distribution's (a package that sets no ``__version__``), else
    "" (the standard library, or no distribution of that name)."""
    version = getattr(sys.modules.get(top), "__version__", "")
    if isinstance(version, str) and version:
        return version
    if top in sys.stdlib_module_names:
        return ""
    try:
        return importlib.metadata.version(top)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ""


def _const_repr(const: Any) -> str:
    """``repr`` of a code constant, with frozensets sorted (their own order follows string
    hashing, which changes with PYTHONHASHSEED)."""
    if isinstance(const, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(c) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ",".join(_const_repr(c) for c in const) + ")"
    return f"{type(const).__name__}:{const!r}"


class _Digester:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.count = 0
        self.tensor_bytes = 0
        self.seen: dict[int, int] = {}  # id -> visit number: cycles and shared values

    def put(self, *parts: Any) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass")
            self.h.update(len(data).to_bytes(8, "little"))
            self.h.update(data)

    def value(self, v: Any, depth: int) -> None:
        self.count += 1
        if self.count > MAX_VALUES or depth > MAX_DEPTH:
            raise Uncacheable("user-code-too-large", "user code read by the trace is too large to key")
        if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
            self.put("plain", type(v).__name__, repr(v))
            return
        key = id(v)
        if key in self.seen:  # a cycle or a shared value: its position identifies it
            self.put("ref", self.seen[key])
            return
        self.seen[key] = len(self.seen)
        if isinstance(v, enum.Enum):
            self.put("enum", type(v).__module__, type(v).__qualname__, v.name)
        elif isinstance(v, (list, tuple, set, frozenset)):
            if len(v) > MAX_ITEMS:
                raise Uncacheable("user-code-too-large", f"a {type(v).__name__} of {len(v)} items")
            items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
            self.put("seq", type(v).__name__, len(v))
            for item in items:
                self.value(item, depth + 1)
        elif isinstance(v, (dict, types.MappingProxyType)):
            if len(v) > MAX_ITEMS:
                raise Uncacheable("user-code-too-large", f"a dict of {len(v)} items")
            self.put("dict", len(v))
            for k, item in v.items():
                self.value(k, depth + 1)
                self.value(item, depth + 1)
        elif isinstance(v, torch.Tensor):
            self.tensor(v)
        elif isinstance(v, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            self.put("torch", str(v))
        elif isinstance(v, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
            self.put("op", str(v))
        elif isinstance(v, functools.partial):
            self.put("partial")
            self.value(v.func, depth + 1)
            self.value(v.args, depth + 1)
            self.value(v.keywords, depth + 1)
        elif isinstance(v, types.MethodType):
            self.put("method")
            self.value(v.__func__, depth + 1)
            self.value(type(v.__self__) if not isinstance(v.__self__, type) else v.__self__, depth + 1)
        elif isinstance(v, types.FunctionType):
            self.function(v, depth)
        elif isinstance(v, types.ModuleType):
            self.put("module", _package_identity(v.__name__) if _installed_module(v.__name__) else v.__name__)
        elif isinstance(v, type):
            self.cls(v, depth)
        elif isinstance(v, types.CodeType):
            self.code(v, depth, globals_={}, module=None)
        elif _installed_module(getattr(type(v), "__module__", None)):
            # An instance of an installed package's type (a builtin function, a compiled
            # kernel object...): its type and, where it has one, its name.
            self.put("installed", type(v).__module__, type(v).__qualname__, getattr(v, "__qualname__", ""))
            if dataclasses.is_dataclass(v) or hasattr(v, "__dict__") and not callable(v):
                self.instance(v, depth)
        else:
            self.put("object", type(v).__module__, type(v).__qualname__)
            self.cls(type(v), depth + 1)
            self.instance(v, depth)

    def instance(self, v: Any, depth: int) -> None:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            state = {f.name: getattr(v, f.name, None) for f in dataclasses.fields(v)}
        else:
            state = dict(getattr(v, "__dict__", {}))
            for slot in getattr(type(v), "__slots__", ()):
                if isinstance(slot, str) and hasattr(v, slot):
                    state[slot] = getattr(v, slot)
        self.value(state, depth + 1)

    def tensor(self, t: torch.Tensor) -> None:
        self.put("tensor", t.dtype, tuple(t.shape), t.stride() if t.layout == torch.strided else (), t.device.type)
        if t.is_meta or t.device.type == "meta":
            return
        nbytes = t.numel() * t.element_size()
        self.tensor_bytes += nbytes
        if self.tensor_bytes > MAX_TENSOR_BYTES:
            raise Uncacheable("user-code-too-large", f"user code reads a {nbytes}-byte tensor")
        data = t.detach().contiguous().cpu()
        self.put(data.reshape(-1).view(torch.uint8).numpy().tobytes() if nbytes else b"")  # 0-d too

    def function(self, fn: types.FunctionType, depth: int) -> None:
        module = getattr(fn, "__module__", None)
        if _installed_module(module):
            self.put("installed-fn", _package_identity(module or ""), module, fn.__qualname__)
            return
        self.put("fn", fn.__qualname__)
        self.code(fn.__code__, depth, globals_=fn.__globals__, module=module)
        self.value(fn.__defaults__, depth + 1)
        self.value(fn.__kwdefaults__, depth + 1)
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell (a name not yet bound)
                cells.append(None)
        self.value(tuple(cells), depth + 1)

    def code(self, code: types.CodeType, depth: int, *, globals_: Mapping[str, Any], module: str | None) -> None:
        names: list[str] = []
        self._code_shape(code, names)
        for name in sorted(set(names)):
            if name in globals_:
                value = globals_[name]
                self.put("global", name)
                if isinstance(value, types.ModuleType) and not _installed_module(value.__name__):
                    # A user module read as a global: the attributes the code names on it.
                    self.put("module", value.__name__)
                    for attr in sorted(set(names)):
                        if attr in vars(value):
                            self.put("attr", attr)
                            self.value(vars(value)[attr], depth + 1)
                else:
                    self.value(value, depth + 1)

    def _code_shape(self, code: types.CodeType, names: list[str]) -> None:
        self.count += 1
        if self.count > MAX_VALUES:
            raise Uncacheable("user-code-too-large", "user code read by the trace is too large to key")
        self.put("code", code.co_code, code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
                 code.co_flags, ",".join(code.co_names), ",".join(code.co_varnames), ",".join(code.co_freevars),
                 ",".join(code.co_cellvars))
        names.extend(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code_shape(const, names)
            else:
                self.put("const", _const_repr(const))

    def cls(self, cls: type, depth: int) -> None:
        module = getattr(cls, "__module__", None)
        if _installed_module(module):
            self.put("installed-cls", _package_identity(module or ""), module, cls.__qualname__)
            return
        self.put("cls", cls.__qualname__)
        for base in cls.__bases__:
            self.value(base, depth + 1)
        for name, member in sorted(vars(cls).items()):
            if name in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
                continue
            self.put("member", name)
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                member = (member.fget, member.fset)
            self.value(member, depth + 1)


def code_shape_digest(code: types.CodeType) -> str:
    """SHA-256 hex of a code object alone, structurally (bytecode, names, argument layout,
    constants and nested code, as :func:`code_digest` walks it), without the globals it
    reads: what decides that two code objects run the same instructions."""
    d = _Digester()
    d._code_shape(code, [])
    d.put("name", code.co_name)
    return d.h.hexdigest()


def code_digest(value: Any) -> str:
    """SHA-256 hex of what decides the behaviour of ``value`` (a function, or any value
    user code reads).  Raises :class:`Uncacheable` past the bounds above."""
    d = _Digester()
    d.value(value, 0)
    return d.h.hexdigest()
