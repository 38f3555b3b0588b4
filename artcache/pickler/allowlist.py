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
from collections.abc import Callable, Mapping
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
    # Extra checks of a "dict"/"dataclass" instance's decoded state (raise CorruptEntryError).
    check: Callable[[dict[str, Any]], None] | None = None


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
    one or allowed by *module*: see :meth:`resolve_callable` for what a module admits.

    Every entry carries a one-line reason (:meth:`reasons`): why an entry needs it, or why a
    name is denied.  Decoding *constructs* these classes; the callables are only referenced,
    for torch's runtime to call later, and none of them evaluates strings, loads libraries
    or touches files (``tests/test_hostile_pickler.py`` decodes random documents naming every
    entry with those operations trapped).
    """

    def __init__(self) -> None:
        self._by_cls: dict[type, ClassEntry] = {}
        self._by_name: dict[str, ClassEntry] = {}
        self._callables: dict[str, Any] = {}
        self._deferred: set[str] = set()
        self._modules: set[str] = set()
        self._denied: set[str] = set()
        self._reasons: dict[str, str] = {}
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
        new._reasons = dict(self._reasons)
        return new

    def freeze(self) -> Allowlist:
        self._frozen = True
        return self

    def _check_mutable(self) -> None:
        if self._frozen:
            raise TypeError("this Allowlist is frozen; register on allowlist.copy()")

    def _note(self, key: str, reason: object) -> None:
        if not isinstance(reason, str) or not reason.strip() or "\n" in reason or "\r" in reason:
            raise ValueError(f"allowlist entry {key} needs a one-line reason, got {reason!r}")
        self._reasons[key] = reason.strip()

    def reasons(self) -> dict[str, str]:
        """Every entry and its reason: ``module:qualname`` (classes and callables),
        ``module:*`` (a module's functions), ``deny module:name`` (refused names)."""
        return dict(self._reasons)

    def register(
        self,
        cls: type,
        strategy: Strategy = "auto",
        *,
        reason: str,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Allow instances of ``cls`` (exact type, not subclasses), rebuilt by ``strategy``.

        ``dataclass``: fields, rebuilt with ``object.__new__`` + ``object.__setattr__`` (so
        frozen classes work and ``__init__``/``__post_init__`` do not run: the stored state
        is restored as it was).  ``enum``: by value.  ``namedtuple``: ``cls._make(fields)``.
        ``dict``: ``object.__new__`` + ``__dict__`` update.  ``custom``: ``decode(encode(obj))``.
        ``check`` (``dict``/``dataclass``) vets the decoded state beyond the generic rules
        of :func:`check_instance_state`.
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
        if check is not None and strategy not in ("dict", "dataclass"):
            raise TypeError("check is only for strategies 'dict' and 'dataclass'")
        if strategy == "dataclass" and not dataclasses.is_dataclass(cls):
            raise TypeError(f"{name} is not a dataclass")
        if strategy == "enum" and not issubclass(cls, enum.Enum):
            raise TypeError(f"{name} is not an Enum")
        if strategy == "namedtuple" and not (issubclass(cls, tuple) and hasattr(cls, "_make")):
            raise TypeError(f"{name} is not a NamedTuple")
        if strategy == "dict" and cls.__new__ is not object.__new__:
            # object.__new__ on a class with its own __new__ would skip invariants it sets up.
            raise TypeError(f"{name} defines __new__; register it with strategy 'custom'")
        self._note(name, reason)
        entry = ClassEntry(cls, name, strategy, encode, decode, check)
        self._by_cls[cls] = entry
        self._by_name[name] = entry

    def register_callable(self, fn: Any, name: str | None = None, *, reason: str) -> None:
        """Allow one callable by name (``module:qualname`` unless given)."""
        self._check_mutable()
        key = name or qualified_name(fn)
        self._note(key, reason)
        self._callables[key] = fn

    def register_deferred_callable(self, module: str, name: str, *, reason: str) -> None:
        """Allow the callable ``module:name`` without importing ``module`` now: while that
        module is not imported, the name loads as a :class:`DeferredCallable` (so register
        only callables that nothing compares by identity while the module is unloaded)."""
        self._check_mutable()
        if not _MODULE_RE.match(module) or not is_plain_name(name):
            raise ValueError(f"not a callable reference: {module}:{name}")
        self._note(f"{module}:{name}", reason)
        self._deferred.add(f"{module}:{name}")

    def allow_module(self, module: str, *, reason: str) -> None:
        """Allow, by name, the *functions* defined in ``module`` (see :meth:`resolve_callable`)."""
        self._check_mutable()
        if not _MODULE_RE.match(module):
            raise ValueError(f"not a module name: {module!r}")
        self._note(f"{module}:*", reason)
        self._modules.add(module)

    def deny(self, name: str, *, reason: str) -> None:
        """Refuse ``module:name`` even though its module is allowed."""
        self._check_mutable()
        self._note(f"deny {name}", reason)
        self._denied.add(name)

    # -- lookups --------------------------------------------------------------------
    def class_entry(self, cls: type) -> ClassEntry | None:
        return self._by_cls.get(cls)

    def class_by_name(self, name: object) -> ClassEntry:
        entry = self._by_name.get(name) if isinstance(name, str) else None
        if entry is None:
            raise CorruptEntryError(f"class not allowlisted: {name!r}")
        return entry

    def callable_names(self) -> list[str]:
        """Every name :meth:`resolve_callable` accepts in this process: registered classes
        and callables, deferred ones, and each function of an allowed module."""
        names = set(self._by_name) | set(self._callables) | self._deferred
        for module_name in self._modules:
            module = sys.modules.get(module_name)
            for attr in list(vars(module)) if module is not None else ():
                name = f"{module_name}:{attr}"
                try:
                    self.resolve_callable(name)
                except CorruptEntryError:
                    continue
                names.add(name)
        return sorted(names)

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
        """Map ``module:name`` to an object without importing or calling anything foreign.

        Registered classes and callables resolve by their exact name.  An allowed *module*
        admits only its functions, and only these:
        * the module is one the reader allowed *exactly* (no prefix matching), taken from
          ``sys.modules`` (or imported: it is a module the reader named);
        * ``name`` is one identifier, not a dunder, read from the module's ``__dict__`` (no
          lazy ``__getattr__`` hook runs, and no walk reaches a class's methods, so e.g.
          ``ShapeEnv.evaluate_guards_expression``, which ``eval``s, is out of reach);
        * the object is a plain Python or builtin *function* (no class: some constructors
          compile code or open files, e.g. ``torch.CompilationUnit``), *defined* in an
          allowed module (its ``__module__``), so re-exports such as ``torch.load`` (from
          ``torch.serialization``) are refused, and the few functions of allowed modules
          that load libraries, read files or evaluate strings are denied by name.
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
        module_name, sep, attr = name.partition(":")
        if not sep or name in self._denied or module_name not in self._modules:
            raise CorruptEntryError(f"callable not allowlisted: {name!r}")
        if not is_plain_name(attr):
            raise CorruptEntryError(f"callable name is not one plain identifier: {name!r}")
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise CorruptEntryError(f"module of {name!r} is not importable") from exc
        obj = vars(module).get(attr, _MISSING)
        if not isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
            raise CorruptEntryError(f"{name!r} is not a function of an allowed module")
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


# -- instance state ---------------------------------------------------------------------------
# Cached derived values that must not be restored: torch's dataclass_with_cached_hash keeps
# the hash in ``_hash`` (its own __reduce__ drops it); a stored one would let a document pick
# the hashes of its objects, and so which of them a set or dict compares with ``==``.
DERIVED_STATE = frozenset({"_hash"})


@functools.cache
def declared_attributes(cls: type) -> frozenset[str]:
    """Attribute names ``cls`` declares: dataclass fields and annotations along its MRO."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(vars(klass).get("__annotations__", {}))
    if dataclasses.is_dataclass(cls):
        names.update(f.name for f in dataclasses.fields(cls))
    return frozenset(names)


def check_instance_state(cls: type, state: dict[str, Any], typed_callables: Mapping[str, type] | None = None) -> None:
    """The rules every restored ``__dict__`` follows (``dict`` strategy, Triton codecs).

    * names are plain identifiers, never dunders (``__reduce_ex__``, ``__sympy__``...);
    * derived caches (:data:`DERIVED_STATE`) are not restored;
    * a name the class defines as a method is not shadowed by stored state;
    * a *callable* value sits only under a name the class declares (a field or an
      annotation): protocol hooks that libraries look up on any object, such as sympy's
      ``_sympy_`` (called when a sympy number is compared with the object), can therefore
      never be planted on a decoded object;
    * ``typed_callables`` names further attributes that hold a callable of one exact kind
      (a Triton kernel object's ``fn`` is its ``JITFunction``, assigned in ``__init__``
      without an annotation): there a callable passes only as an instance of that type.
    """
    declared = declared_attributes(cls)
    typed = typed_callables or {}
    for key, value in state.items():
        if not is_plain_name(key) or key in DERIVED_STATE:
            raise CorruptEntryError(f"bad {cls.__qualname__} state key {key!r}")
        if callable(getattr(cls, key, None)):
            raise CorruptEntryError(f"bad {cls.__qualname__} state key {key!r}: shadows a method")
        if key in typed and value is not None:
            if not isinstance(value, typed[key]):
                raise CorruptEntryError(f"bad {cls.__qualname__} state key {key!r}: not a {typed[key].__qualname__}")
            continue
        if callable(value) and key not in declared:
            raise CorruptEntryError(f"bad {cls.__qualname__} state key {key!r}: a callable under an undeclared name")


def _check_module_state(state: dict[str, Any]) -> None:
    """nn.Module state: ``__getattr__`` serves ``_parameters``/``_buffers``/``_modules``
    entries as attributes, so they may only hold what their names promise; hook tables are
    empty (a hook would be called with the module's inputs)."""
    kinds = {"_parameters": torch.nn.Parameter, "_buffers": torch.Tensor, "_modules": torch.nn.Module}
    for table, kind in kinds.items():
        values = state.get(table, {})
        if not isinstance(values, dict) or not all(
            type(k) is str and not k.startswith("__") and (v is None or isinstance(v, kind)) for k, v in values.items()
        ):
            raise CorruptEntryError(f"bad nn.Module {table}")
    for key, value in state.items():
        if "hook" in key and value:
            raise CorruptEntryError(f"nn.Module state {key} is not empty")


def _check_sym_int_eq(state: dict[str, Any]) -> None:
    # SymIntEqByExpr hashes sympy.Integer(val), and int() of a constant sympy expression
    # evaluates it (Pow(10, 10**9) would take minutes).  Stored values are ints, which a
    # stored SymInt's expression folds to (a sympy Integer), or expressions with symbols,
    # which int() refuses at once.
    val = state.get("val")
    ok = type(val) is int or isinstance(val, sympy.Integer) or (isinstance(val, sympy.Basic) and not val.is_number)
    if set(state) != {"val"} or not ok:
        raise CorruptEntryError("bad SymIntEqByExpr state")


# -- the default allowlist, audited entry by entry ----------------------------------------------
# Modules whose own functions FX graphs call (Dynamo, make_fx and Inductor graphs).
_CALLABLE_MODULES = (
    ("operator", "Python operators in Dynamo graphs (getitem, add, mul...)"),
    ("_operator", "the C twin of operator, which Dynamo graphs name too"),
    ("math", "math functions on Python numbers and symbolic sizes"),
    ("torch", "torch's tensor operations (torch.add, torch.cat...) as graph targets"),
    ("torch.functional", "Python tensor functions re-exported by torch (einsum, split...)"),
    ("torch.nn.functional", "F.* functions of user code (linear, gelu, softmax...)"),
    ("torch._C._nn", "C implementations F.* functions dispatch to (linear, pad...)"),
    ("torch._C._linalg", "C implementations of torch.linalg"),
    ("torch._C._fft", "C implementations of torch.fft"),
    ("torch._C._special", "C implementations of torch.special"),
    ("torch.linalg", "torch.linalg functions of user code"),
    ("torch.fft", "torch.fft functions of user code"),
    ("torch.special", "torch.special functions of user code"),
    ("torch.fx.experimental.symbolic_shapes", "symbolic-size helpers of user code (sym_eq, guard_or_false...)"),
    ("torch.masked._ops", "masked reductions Dynamo keeps whole as graph targets (pure tensor math)"),
    ("torch.signal.windows.windows", "window functions Dynamo keeps whole as graph targets (pure tensor math)"),
)
# Functions of those modules that read or write files, load libraries, import by name,
# evaluate strings or call a function they are given (found by scanning each function's
# code for such names, then read one by one).
_DENIED = (
    ("torch:compile", "compiles code"),
    ("torch:load", "reads files and unpickles"),
    ("torch:save", "writes files"),
    ("torch:from_file", "maps a file named by a string"),
    ("torch:set_default_tensor_type", "imports a class named by a string"),
    ("torch:_import_dotted_name", "imports a module named by a string"),
    ("torch:_load_global_deps", "loads shared libraries with ctypes"),
    ("torch:_preload_cuda_deps", "loads shared libraries with ctypes (older torch)"),
    ("torch:_preload_cuda_lib", "loads shared libraries with ctypes"),
    ("torch:_get_cuda_dep_paths", "searches the file system"),
    ("torch:_import_device_backends", "imports plug-ins from entry points"),
    ("torch:_is_device_backend_autoload_enabled", "reads the environment"),
    ("torch:_register_device_module", "installs a module into sys.modules"),
    ("torch:import_ir_module", "loads TorchScript code from a file"),
    ("torch:import_ir_module_from_buffer", "loads TorchScript code from bytes"),
    ("torch:fork", "calls the function it is given on another thread"),
    ("operator:attrgetter", "turns a data string into attribute access"),
    ("operator:methodcaller", "turns a data string into a method call"),
    ("_operator:attrgetter", "turns a data string into attribute access"),
    ("_operator:methodcaller", "turns a data string into a method call"),
)
# builtins is never allowed as a module (eval, exec, open, __import__ live there).
_BUILTINS = (
    "getattr", "len", "abs", "min", "max", "round", "pow", "divmod", "sum", "all", "any",
    "isinstance", "int", "float", "bool", "complex", "str", "bytes", "tuple", "list", "dict",
    "set", "frozenset", "slice", "range",
)
_BUILTIN_REASON = "a Python builtin on plain values, as Dynamo graphs call it"
# Internals that Dynamo/AOTAutograd graphs call; tolerated if a torch version lacks one.
_TORCH_CALLABLES = (
    ("torch._C", "_set_grad_enabled", "graphs switch grad mode around no_grad regions"),
    ("torch.amp.autocast_mode", "_enter_autocast", "graphs enter autocast regions"),
    ("torch.amp.autocast_mode", "_exit_autocast", "graphs leave autocast regions"),
    # Classes graphs name as values (isinstance checks, constructors of sizes and info).
    ("torch", "Tensor", "the tensor class (isinstance checks, output types)"),
    ("torch.nn.parameter", "Parameter", "the parameter class (isinstance checks, output types)"),
    ("torch", "Size", "builds a size tuple"),
    ("torch", "SymInt", "the symbolic int class (isinstance checks)"),
    ("torch", "SymFloat", "the symbolic float class (isinstance checks)"),
    ("torch", "SymBool", "the symbolic bool class (isinstance checks)"),
    ("torch", "finfo", "floating-point type limits"),
    ("torch", "iinfo", "integer type limits"),
)
# Classes found in node.meta of Dynamo/AOT graphs (pytree key paths of unbacked bindings,
# shape-prop metadata), by module and name so an absent one (older torch) is skipped.
_KEY_PATH = "a pytree key path of an unbacked symbol binding (node.meta)"
_META_CLASSES = (
    ("torch.fx.passes.shape_prop", "TensorMetadata", "shape-prop metadata of a node (node.meta)"),
    ("torch.utils._pytree", "SequenceKey", _KEY_PATH),
    ("torch.utils._pytree", "MappingKey", _KEY_PATH),
    ("torch.utils._pytree", "GetAttrKey", _KEY_PATH),
    ("torch.fx.experimental.symbolic_shapes", "CallMethodKey", _KEY_PATH),
    ("torch.fx.experimental.symbolic_shapes", "ConvertIntKey", _KEY_PATH),
    ("torch.fx.experimental.symbolic_shapes", "DivideByKey", _KEY_PATH),
    ("torch.fx.experimental.symbolic_shapes", "InnerTensorKey", _KEY_PATH),
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
    for module, reason in _CALLABLE_MODULES:
        allow.allow_module(module, reason=reason)
    for name, reason in _DENIED:
        allow.deny(name, reason=reason)
    for name in _BUILTINS:
        allow.register_callable(getattr(builtins, name), f"builtins:{name}", reason=_BUILTIN_REASON)
    for module, name, reason in _TORCH_CALLABLES:
        fn = _lookup(module, name)
        if fn is not None:
            allow.register_callable(fn, f"{module}:{name}", reason=reason)
    allow.register(TensorSpec, "dataclass", reason="what FX node metadata keeps of a traced tensor")
    for module, name, reason in _META_CLASSES:
        cls = _lookup(module, name)
        if isinstance(cls, type):
            allow.register(cls, reason=reason)
    sym_int_eq = _lookup("torch.fx.experimental.symbolic_shapes", "SymIntEqByExpr")
    if isinstance(sym_int_eq, type):
        allow.register(sym_int_eq, "dict", reason="a size compared by its expression (dynamic-shape metadata)",
                       check=_check_sym_int_eq)
    # Leaf modules that symbolic_trace keeps as call_module targets (nn.Linear, nn.ReLU...).
    # Their state is their __dict__ (_parameters, _buffers, hyper-parameters, empty hook
    # dicts), checked by _check_module_state, so nothing runs on load.
    for name in getattr(torch.nn.modules, "__all__", ()):
        cls = getattr(torch.nn.modules, name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__new__ is object.__new__:
            allow.register(cls, "dict", reason="a leaf module a traced graph calls (call_module)",
                           check=_check_module_state)
    allow.register(torch.nn.Module, "dict", reason="the root module of a traced graph", check=_check_module_state)
    _register_return_types(allow)
    return allow.freeze()


def _register_return_types(allow: Allowlist) -> None:
    """``torch.return_types``: the named result tuples of ops such as max, sort, topk,
    aminmax (plain data; Dynamo's example values hold them).  Stored as their fields and
    rebuilt by the C struct-sequence constructor, which runs no Python code."""
    for name in sorted(dir(torch.return_types)):
        cls = getattr(torch.return_types, name)
        if isinstance(cls, type) and issubclass(cls, tuple) and type(getattr(cls, "n_sequence_fields", None)) is int:
            allow.register(cls, "custom", encode=list, decode=_return_type_builder(cls),
                           reason="a named result tuple of an op (max, sort...), rebuilt from its fields")


def _return_type_builder(cls: type) -> Any:
    def build(fields: Any) -> Any:
        if type(fields) is not list or len(fields) != cls.n_sequence_fields:  # type: ignore[attr-defined]
            raise CorruptEntryError(f"bad {cls.__qualname__} fields")
        return cls(fields)

    return build
