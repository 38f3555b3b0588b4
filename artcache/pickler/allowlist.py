"""Allowlist, tags and by-name callable resolution for :mod:`artcache.pickler`.

Why an allowlist instead of pickle: a pickle stream names arbitrary ``module.attr``
callables and calls them while loading, so loading an entry from a shared store would
be code execution for whoever can write to it.  Here a document can only *name*
classes and callables, the loader looks those names up in an :class:`Allowlist` that
the *reader* built, and class reconstruction follows a strategy chosen at registration
time, never one chosen by the document.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import functools
import importlib
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import sympy
import torch

from artcache.errors import CorruptEntryError, Uncacheable

Strategy = Literal["auto", "dataclass", "enum", "namedtuple", "dict", "custom"]

# A name segment: identifier characters only, so a walk can never spell a call, an
# index or a path.  Dunder names are refused separately (``_is_plain_name``).
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class Tag(enum.IntEnum):
    """msgpack ExtType codes that open a *tagged array* ``[ExtType(tag, b""), *payload]``.

    The numbers are part of the on-disk format: never renumber, only append (and bump
    ``FORMAT_VERSION`` in :mod:`artcache.pickler` when a payload layout changes).
    """

    TUPLE = 1
    DICT = 2  # dict whose keys are not all str (str-keyed dicts are native msgpack maps)
    SET = 3
    FROZENSET = 4
    BIGINT = 5
    COMPLEX = 6
    SLICE = 7
    RANGE = 8
    ELLIPSIS = 9
    BLOB = 10  # bytes stored out of band: [tag, digest, size]
    BYTEARRAY = 11
    ORDERED_DICT = 12
    DEFAULT_DICT = 13
    ORDERED_SET = 14
    PARTIAL = 15
    OBJ = 20  # allowlisted class instance: [tag, "module:qualname", payload]
    FN = 21  # allowlisted callable or class reference: [tag, "module:qualname"]
    OP = 22  # torch.ops OpOverload: [tag, namespace, op, overload]
    OP_PACKET = 23
    HOP = 24  # HigherOrderOperator: [tag, name]
    DTYPE = 30
    DEVICE = 31
    SIZE = 32
    MEMORY_FORMAT = 33
    LAYOUT = 34
    TENSOR = 35
    SYM = 36  # SymInt/SymFloat/SymBool: [tag, kind, expr, hint]
    SYMPY = 37
    TREESPEC = 38
    GRAPH_MODULE = 40
    NODE = 41


def is_plain_name(name: object) -> bool:
    """True for an identifier that is not a dunder (``__globals__``, ``__class__``...)."""
    return isinstance(name, str) and bool(IDENT_RE.match(name)) and not name.startswith("__")


@dataclass(frozen=True)
class TensorSpec:
    """What a graph needs to know about a traced tensor, without its data.

    FX ``node.meta['val']`` holds FakeTensors tied to a live FakeTensorMode and ShapeEnv,
    which cannot outlive the process; a TensorSpec keeps their metadata as plain values
    (sizes are ints or sympy expressions) so it can be stored, hashed and compared.
    """

    shape: tuple[int | sympy.Basic, ...]
    stride: tuple[int | sympy.Basic, ...]
    storage_offset: int | sympy.Basic
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool


@dataclass(frozen=True)
class ClassEntry:
    cls: type
    name: str
    strategy: str
    encode: Callable[[Any], Any] | None = None
    decode: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class DeferredCallable:
    """A by-name reference to a callable whose module is not imported yet.

    Loading an entry must not import a module only to name a function that nothing calls
    while the entry is rebuilt (``fx_kwargs["get_decomp_fn"]`` is read only at compile
    time, and ``torch._inductor.decomposition`` costs a quarter of a second to import).
    The module is imported at the first call instead.  Only names the reader registered
    with :meth:`Allowlist.register_deferred_callable` become one of these.
    """

    module: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.module}:{self.name}"

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


def qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', None)}"


class Allowlist:
    """The types and callables a document may name, and how to rebuild each class.

    Classes are registered by object (stored as ``"module:qualname"``); the loader maps a
    name back through this registry only, so a name nobody registered never reaches
    ``import``.  Callables (FX targets, defaultdict factories) are either registered one by
    one or allowed by *module*: see :meth:`resolve_callable` for why that walk is safe.
    """

    def __init__(self) -> None:
        self._by_cls: dict[type, ClassEntry] = {}
        self._by_name: dict[str, ClassEntry] = {}
        self._callables: dict[str, Any] = {}
        self._deferred: set[str] = set()
        self._modules: set[str] = set()
        self._denied: set[str] = set()
        self._frozen = False

    # -- building -------------------------------------------------------------------
    def copy(self) -> Allowlist:
        """A mutable copy (the default allowlist is frozen so nobody edits it globally)."""
        new = Allowlist()
        new._by_cls = dict(self._by_cls)
        new._by_name = dict(self._by_name)
        new._callables = dict(self._callables)
        new._deferred = set(self._deferred)
        new._modules = set(self._modules)
        new._denied = set(self._denied)
        return new

    def freeze(self) -> Allowlist:
        self._frozen = True
        return self

    def _check_mutable(self) -> None:
        if self._frozen:
            raise TypeError("this Allowlist is frozen; register on allowlist.copy()")

    def register(
        self,
        cls: type,
        strategy: Strategy = "auto",
        *,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> None:
        """Allow instances of ``cls`` (exact type, not subclasses), rebuilt by ``strategy``.

        ``dataclass``: fields, rebuilt with ``object.__new__`` + ``object.__setattr__`` (so
        frozen classes work and ``__init__``/``__post_init__`` do not run: the stored state
        is restored as it was).  ``enum``: by value.  ``namedtuple``: ``cls._make(fields)``.
        ``dict``: ``object.__new__`` + ``__dict__`` update.  ``custom``: ``decode(encode(obj))``.
        """
        self._check_mutable()
        if not isinstance(cls, type):
            raise TypeError(f"register() takes a class, got {cls!r}")
        name = qualified_name(cls)
        if "<locals>" in name:
            raise TypeError(f"{name} is a local class: it has no stable name")
        if strategy == "auto":
            strategy = _infer_strategy(cls)
        if strategy == "custom":
            if encode is None or decode is None:
                raise TypeError("strategy 'custom' needs both encode and decode")
        elif encode is not None or decode is not None:
            raise TypeError("encode/decode are only for strategy 'custom'")
        if strategy == "dataclass" and not dataclasses.is_dataclass(cls):
            raise TypeError(f"{name} is not a dataclass")
        if strategy == "enum" and not issubclass(cls, enum.Enum):
            raise TypeError(f"{name} is not an Enum")
        if strategy == "namedtuple" and not (issubclass(cls, tuple) and hasattr(cls, "_make")):
            raise TypeError(f"{name} is not a NamedTuple")
        if strategy == "dict" and cls.__new__ is not object.__new__:
            # object.__new__ on a class with its own __new__ would skip invariants it sets up.
            raise TypeError(f"{name} defines __new__; register it with strategy 'custom'")
        entry = ClassEntry(cls, name, strategy, encode, decode)
        self._by_cls[cls] = entry
        self._by_name[name] = entry

    def register_callable(self, fn: Any, name: str | None = None) -> None:
        """Allow one callable by name (``module:qualname`` unless given)."""
        self._check_mutable()
        self._callables[name or qualified_name(fn)] = fn

    def register_deferred_callable(self, module: str, name: str) -> None:
        """Allow the callable ``module:name`` without importing ``module`` now: while that
        module is not imported, the name loads as a :class:`DeferredCallable` (so register
        only callables that nothing compares by identity while the module is unloaded)."""
        self._check_mutable()
        if not _MODULE_RE.match(module) or not is_plain_name(name):
            raise ValueError(f"not a callable reference: {module}:{name}")
        self._deferred.add(f"{module}:{name}")

    def allow_module(self, module: str) -> None:
        """Allow, by name, callables *defined in* ``module`` (see :meth:`resolve_callable`)."""
        self._check_mutable()
        if not _MODULE_RE.match(module):
            raise ValueError(f"not a module name: {module!r}")
        self._modules.add(module)

    def deny(self, name: str) -> None:
        """Refuse ``module:qualname`` even though its module is allowed."""
        self._check_mutable()
        self._denied.add(name)

    # -- lookups --------------------------------------------------------------------
    def class_entry(self, cls: type) -> ClassEntry | None:
        return self._by_cls.get(cls)

    def class_by_name(self, name: object) -> ClassEntry:
        entry = self._by_name.get(name) if isinstance(name, str) else None
        if entry is None:
            raise CorruptEntryError(f"class not allowlisted: {name!r}")
        return entry

    def callable_name(self, fn: Any) -> str:
        """The name under which ``fn`` resolves back to itself; Uncacheable otherwise."""
        entry = self._by_cls.get(fn) if isinstance(fn, type) else None
        if entry is not None:
            return entry.name
        if isinstance(fn, DeferredCallable) and fn.qualified in self._deferred:
            return fn.qualified
        module = getattr(fn, "__module__", None)
        for attr in ("__qualname__", "__name__"):
            name = f"{module}:{getattr(fn, attr, None)}"
            try:
                if self.resolve_callable(name) is fn:
                    return name
            except CorruptEntryError:
                continue
        raise Uncacheable("callable-not-allowlisted", f"{module}:{getattr(fn, '__qualname__', fn)!r}")

    def resolve_callable(self, name: object) -> Any:
        """Map ``module:qualname`` to an object without importing or calling anything foreign.

        Why this is safe although it walks attributes:
        * the module must be one the reader allowed *exactly* (no prefix matching), and is
          taken from ``sys.modules`` (or imported: it is a module the reader named);
        * each segment is an identifier and not a dunder, so the walk cannot reach
          ``__globals__``, ``__builtins__``, ``__subclasses__`` or spell a call or index;
        * the first step reads the module's ``__dict__`` (no lazy ``__getattr__`` import
          hooks run), later steps may only descend through *classes*, and a step that lands
          on a module is refused, so ``torch:os.system`` cannot hop from torch into ``os``;
        * the object found must itself be *defined* in an allowed module (its ``__module__``),
          so re-exports such as ``torch.load`` (from ``torch.serialization``) are refused,
          and the few dangerous objects that do live in allowed modules are denied by name.
        Nothing found is called here; defaultdict factories and graph targets only run when
        the caller uses the loaded object.
        """
        if not isinstance(name, str):
            raise CorruptEntryError(f"callable name is not a string: {name!r}")
        if name in self._callables:
            return self._callables[name]
        if name in self._deferred:
            return self._deferred_callable(name)
        entry = self._by_name.get(name)
        if entry is not None:
            return entry.cls
        module_name, sep, qual = name.partition(":")
        if not sep or name in self._denied or module_name not in self._modules:
            raise CorruptEntryError(f"callable not allowlisted: {name!r}")
        parts = qual.split(".")
        if not all(is_plain_name(p) for p in parts):
            raise CorruptEntryError(f"callable name has a forbidden segment: {name!r}")
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise CorruptEntryError(f"module of {name!r} is not importable") from exc
        obj: Any = vars(module).get(parts[0], _MISSING)
        for part in parts[1:]:
            if not isinstance(obj, type):
                raise CorruptEntryError(f"callable path {name!r} leaves classes")
            obj = getattr(obj, part, _MISSING)
        if obj is _MISSING or isinstance(obj, types.ModuleType) or not callable(obj):
            raise CorruptEntryError(f"callable not found or not callable: {name!r}")
        if getattr(obj, "__module__", None) not in self._modules:
            raise CorruptEntryError(f"{name!r} is defined outside the allowed modules")
        return obj

    def _deferred_callable(self, name: str) -> Any:
        module_name, _, attr = name.partition(":")
        module = sys.modules.get(module_name)
        if module is None:
            return DeferredCallable(module_name, attr)
        obj = vars(module).get(attr, _MISSING)
        if obj is _MISSING or not callable(obj):
            raise CorruptEntryError(f"callable not found or not callable: {name!r}")
        return obj


_MISSING = object()


def _infer_strategy(cls: type) -> str:
    if issubclass(cls, enum.Enum):
        return "enum"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return "namedtuple"
    return "dict"


# Modules whose own functions FX graphs call (Dynamo, make_fx and Inductor graphs).
_CALLABLE_MODULES = (
    "operator", "_operator", "math", "torch", "torch.functional", "torch.nn.functional",
    "torch._C._nn", "torch._C._linalg", "torch._C._fft", "torch._C._special",
    "torch.linalg", "torch.fft", "torch.special", "torch.fx.experimental.symbolic_shapes",
    # Graph targets Dynamo keeps whole (in-graph torch functions): masked reductions and
    # window functions, pure tensor math; referenced by name, never called while decoding.
    "torch.masked._ops", "torch.signal.windows.windows",
)
# Objects that live in those modules but read files, import by name, or compile code,
# or (attrgetter/methodcaller) turn data strings into attribute access.
_DENIED = (
    "torch:compile", "torch:load", "torch:save", "torch:from_file",
    "torch:set_default_tensor_type", "torch:_import_dotted_name", "torch:_load_global_deps",
    "operator:attrgetter", "operator:methodcaller", "_operator:attrgetter", "_operator:methodcaller",
)
# builtins is never allowed as a module (eval, exec, open, __import__ live there).
_BUILTINS = (
    "getattr", "len", "abs", "min", "max", "round", "pow", "divmod", "sum", "all", "any",
    "isinstance", "int", "float", "bool", "complex", "str", "bytes", "tuple", "list", "dict",
    "set", "frozenset", "slice", "range",
)
# Internals that Dynamo/AOTAutograd graphs call; tolerated if a torch version lacks one.
_TORCH_CALLABLES = (
    ("torch._C", "_set_grad_enabled"),
    ("torch.amp.autocast_mode", "_enter_autocast"),
    ("torch.amp.autocast_mode", "_exit_autocast"),
)
# Classes found in node.meta of Dynamo/AOT graphs (pytree key paths of unbacked bindings,
# shape-prop metadata), by module and name so an absent one (older torch) is skipped.
_META_CLASSES = (
    ("torch.fx.passes.shape_prop", "TensorMetadata"),
    ("torch.utils._pytree", "SequenceKey"),
    ("torch.utils._pytree", "MappingKey"),
    ("torch.utils._pytree", "GetAttrKey"),
    ("torch.fx.experimental.symbolic_shapes", "CallMethodKey"),
    ("torch.fx.experimental.symbolic_shapes", "ConvertIntKey"),
    ("torch.fx.experimental.symbolic_shapes", "DivideByKey"),
    ("torch.fx.experimental.symbolic_shapes", "InnerTensorKey"),
)


def _lookup(module: str, name: str) -> Any:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
    return getattr(mod, name, None)


@functools.cache
def default_allowlist() -> Allowlist:
    """The frozen allowlist used when ``loads``/``dumps`` get none; ``.copy()`` to extend.

    Built once per process by this function rather than at import time, and frozen, so
    no module-level mutable registry exists for code elsewhere to widen behind our back.
    """
    allow = Allowlist()
    for module in _CALLABLE_MODULES:
        allow.allow_module(module)
    for name in _DENIED:
        allow.deny(name)
    for name in _BUILTINS:
        allow.register_callable(getattr(builtins, name), f"builtins:{name}")
    for module, name in _TORCH_CALLABLES:
        fn = _lookup(module, name)
        if fn is not None:
            allow.register_callable(fn, f"{module}:{name}")
    allow.register(TensorSpec, "dataclass")
    for module, name in _META_CLASSES:
        cls = _lookup(module, name)
        if isinstance(cls, type):
            allow.register(cls)
    # Leaf modules that symbolic_trace keeps as call_module targets (nn.Linear, nn.ReLU...).
    # Their state is their __dict__ (_parameters, _buffers, hyper-parameters, empty hook
    # dicts); any hook callable inside would fail to encode, so nothing runs on load.
    for name in getattr(torch.nn.modules, "__all__", ()):
        cls = getattr(torch.nn.modules, name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__new__ is object.__new__:
            allow.register(cls, "dict")
    allow.register(torch.nn.Module, "dict")
    _register_return_types(allow)
    return allow.freeze()


def _register_return_types(allow: Allowlist) -> None:
    """``torch.return_types``: the named result tuples of ops such as max, sort, topk,
    aminmax (plain data; Dynamo's example values hold them).  Stored as their fields and
    rebuilt by the C struct-sequence constructor, which runs no Python code."""
    for name in sorted(dir(torch.return_types)):
        cls = getattr(torch.return_types, name)
        if isinstance(cls, type) and issubclass(cls, tuple) and type(getattr(cls, "n_sequence_fields", None)) is int:
            allow.register(cls, "custom", encode=list, decode=_return_type_builder(cls))


def _return_type_builder(cls: type) -> Any:
    def build(fields: Any) -> Any:
        if type(fields) is not list or len(fields) != cls.n_sequence_fields:  # type: ignore[attr-defined]
            raise CorruptEntryError(f"bad {cls.__qualname__} fields")
        return cls(fields)

    return build
