"""The pickler's core: tags, the encoder and decoder, and codecs for plain Python values.

A document is msgpack in which every value that is not native msgpack (None, bool, int,
float, str, bytes, list, str-keyed dict) is a *tagged array* ``[ExtType(tag, b""),
*payload]``.  :class:`Encoder` and :class:`Decoder` walk values and dispatch on the Python
type (encoding) or the tag (decoding) to handlers: the ones for plain Python values live
here, the ones for torch values and FX graphs in :mod:`.torch_codec` and :mod:`.fx_codec`,
and :mod:`artcache.pickler` assembles the tables.  Codecs import this module; this module
imports no codec.
"""

from __future__ import annotations

import collections
import enum
import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import msgpack
import sympy
import torch
from torch.utils._ordered_set import OrderedSet

from artcache.digest import content_digest, is_digest
from artcache.errors import CorruptEntryError, IncompatibleEntryError, Uncacheable
from artcache.pickler.allowlist import (
    DERIVED_STATE,
    Allowlist,
    DeferredCallable,
    check_instance_state,
    qualified_name,
)

# Nesting bound on both sides: dumps refuses deeper objects (Uncacheable) and loads refuses
# deeper documents (CorruptEntryError) before Python's own recursion limit is near.
MAX_DEPTH = 200
_INT_MIN, _UINT_MAX = -(1 << 63), (1 << 64) - 1
_MAX_BIGINT_BYTES = 1 << 16


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


EXT = {tag: msgpack.ExtType(int(tag), b"") for tag in Tag}


def corrupt_unless(ok: bool, what: str) -> None:
    if not ok:
        raise CorruptEntryError(what)


# -- encoder -----------------------------------------------------------------------------------
Handler = Callable[["Encoder", Any, int], Any]
Resolver = Callable[[type], "Handler | None"]


class Encoder:
    """One dumps call: the blob and storage tables and the FX node context.

    ``handlers`` maps exact types to their encoders; ``resolve`` finds one for any other
    type (subclasses of torch types), or ``None`` to fall back to the allowlist.
    """

    def __init__(
        self, allow: Allowlist, for_hashing: bool, inline_limit: int, handlers: Mapping[type, Handler],
        resolve: Resolver,
    ) -> None:
        self.allow = allow
        self.for_hashing = for_hashing
        self.inline_limit = inline_limit
        self.blobs: dict[str, bytes] = {}
        self.storages: list[list[Any]] = []
        self.storage_ids: dict[int, int] = {}
        self.keep: list[Any] = []
        self.node_ids: dict[Any, int] | None = None  # set while encoding an FX graph
        # Hashing only: GraphModule parameters and buffers are hashed as input specs.
        self.lifted_inputs = False
        self._handlers: dict[type, Handler] = dict(handlers)
        self._resolve_special = resolve

    def add_blob(self, raw: bytes) -> str:
        digest = content_digest(raw)
        self.blobs.setdefault(digest, raw)
        return digest

    def enc(self, obj: Any, depth: int) -> Any:
        t = type(obj)
        if t is str or t is float or t is bool or obj is None:
            return obj
        if t is int:
            if _INT_MIN <= obj <= _UINT_MAX:
                return obj
            return [EXT[Tag.BIGINT], obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True)]
        if depth >= MAX_DEPTH:
            raise Uncacheable("too-deep", f"nesting deeper than {MAX_DEPTH} (or a cycle)")
        handler = self._handlers.get(t)
        if handler is None:
            handler = self._handlers[t] = self._resolve(t)
        return handler(self, obj, depth + 1)

    def _resolve(self, t: type) -> Handler:
        """Handler for a type not in the fixed table (subclasses, allowlisted classes)."""
        special = self._resolve_special(t)
        if special is not None:
            return special
        entry = self.allow.class_entry(t)
        if entry is not None:
            return _encode_obj
        if issubclass(t, (type, types.FunctionType, types.BuiltinFunctionType, DeferredCallable)):
            return _encode_ref
        return _refuse


def _refuse(enc: Encoder, obj: Any, depth: int) -> Any:
    raise Uncacheable("type-not-allowlisted", qualified_name(type(obj)))


def _encode_ref(enc: Encoder, obj: Any, depth: int) -> list[Any]:
    return [EXT[Tag.FN], enc.allow.callable_name(obj)]


def _encode_obj(enc: Encoder, obj: Any, depth: int) -> list[Any]:
    entry = enc.allow.class_entry(type(obj))
    assert entry is not None  # _resolve only routes registered classes here
    s = entry.strategy
    if s == "dataclass":
        payload: Any = {f.name: enc.enc(getattr(obj, f.name), depth) for f in fields(obj)}
    elif s == "enum":
        payload = enc.enc(obj.value, depth)
    elif s == "namedtuple":
        payload = [enc.enc(x, depth) for x in obj]
    elif s == "dict":
        payload = {k: enc.enc(v, depth) for k, v in vars(obj).items() if k not in DERIVED_STATE}
    else:
        payload = enc.enc(entry.encode(obj), depth)  # type: ignore[misc]
    return [EXT[Tag.OBJ], entry.name, payload]


def _enc_list(enc: Encoder, obj: list[Any], depth: int) -> list[Any]:
    return [enc.enc(x, depth) for x in obj]


def _enc_tuple(enc: Encoder, obj: tuple[Any, ...], depth: int) -> list[Any]:
    return [EXT[Tag.TUPLE], *(enc.enc(x, depth) for x in obj)]


def _enc_pairs(enc: Encoder, obj: Mapping[Any, Any], depth: int) -> list[Any]:
    out: list[Any] = []
    for k, v in obj.items():
        out.append(enc.enc(k, depth))
        out.append(enc.enc(v, depth))
    return out


def _enc_dict(enc: Encoder, obj: dict[Any, Any], depth: int) -> Any:
    if all(type(k) is str for k in obj):
        return {k: enc.enc(v, depth) for k, v in obj.items()}
    return [EXT[Tag.DICT], *_enc_pairs(enc, obj, depth)]


def _enc_set(enc: Encoder, obj: set[Any] | frozenset[Any], depth: int) -> list[Any]:
    # Sorted by encoded bytes: set iteration order follows hashes, which for str depend
    # on PYTHONHASHSEED, so it differs between processes.
    items = sorted((enc.enc(x, depth) for x in obj), key=lambda e: msgpack.packb(e, use_bin_type=True))
    return [EXT[Tag.SET if type(obj) is set else Tag.FROZENSET], *items]


def _enc_bytes(enc: Encoder, obj: bytes, depth: int) -> Any:
    if len(obj) <= enc.inline_limit:
        return obj
    return [EXT[Tag.BLOB], enc.add_blob(obj), len(obj)]


def _enc_partial(enc: Encoder, obj: functools.partial[Any], depth: int) -> list[Any]:
    if getattr(obj, "__dict__", None):
        raise Uncacheable("partial-with-attributes")
    return [EXT[Tag.PARTIAL], enc.enc(obj.func, depth), _enc_list(enc, list(obj.args), depth),
            {k: enc.enc(v, depth) for k, v in obj.keywords.items()}]


def plain_type_handlers() -> dict[type, Handler]:
    """Encoders of plain Python values (containers, bytes, numbers, slices, partials)."""
    return {
        list: _enc_list, tuple: _enc_tuple, dict: _enc_dict,
        set: _enc_set, frozenset: _enc_set, bytes: _enc_bytes,
        bytearray: lambda e, o, d: [EXT[Tag.BYTEARRAY], e.enc(bytes(o), d)],
        complex: lambda e, o, d: [EXT[Tag.COMPLEX], o.real, o.imag],
        slice: lambda e, o, d: [EXT[Tag.SLICE], e.enc(o.start, d), e.enc(o.stop, d), e.enc(o.step, d)],
        range: lambda e, o, d: [EXT[Tag.RANGE], e.enc(o.start, d), e.enc(o.stop, d), e.enc(o.step, d)],
        type(Ellipsis): lambda e, o, d: [EXT[Tag.ELLIPSIS]],
        collections.OrderedDict: lambda e, o, d: [EXT[Tag.ORDERED_DICT], *_enc_pairs(e, o, d)],
        collections.defaultdict: lambda e, o, d: [
            EXT[Tag.DEFAULT_DICT], e.enc(o.default_factory, d), *_enc_pairs(e, o, d)
        ],
        OrderedSet: lambda e, o, d: [EXT[Tag.ORDERED_SET], *(e.enc(x, d) for x in o)],
        functools.partial: _enc_partial,
    }


# -- decoder -----------------------------------------------------------------------------------
DecodeHandler = Callable[["Decoder", list[Any], int], Any]


class _Mark:
    """What an ExtType becomes while unpacking: a shared, preallocated tag marker.

    msgpack's own ExtType is a Python-level namedtuple whose construction dominated load
    time (one per typed value); ext_hook returns these singletons from C instead.
    """

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


_MARKS = {code: _Mark(code) for code in range(-128, 128)}
_BAD_MARK = _Mark(-1000)  # an ext with a payload: no tag has one


def ext_hook(code: int, data: bytes) -> _Mark:
    return _BAD_MARK if data else _MARKS[code]


# Values that must go through dec(): containers, and markers / msgpack Timestamps (ext -1,
# decoded by msgpack itself), which are only valid at the head of a tagged array.
_WALK = frozenset({list, dict, _Mark, msgpack.Timestamp})


class Decoder:
    """One loads call: verified blobs, rebuilt storages and the FX node context.

    ``handlers`` maps tag codes to their decoders (:func:`plain_tag_handlers` plus the
    torch and FX ones)."""

    def __init__(
        self,
        blobs: Mapping[str, bytes] | Callable[[str], bytes],
        map_location: torch.device | str | None,
        allow: Allowlist,
        symbolic: Callable[[str, sympy.Basic, Any], Any] | None,
        verify: bool,
        handlers: Mapping[int, DecodeHandler],
    ) -> None:
        self._fetch = blobs.__getitem__ if isinstance(blobs, Mapping) else blobs
        self.map_location = map_location
        self.allow = allow
        self.symbolic = symbolic
        self.verify = verify
        self.storages: list[torch.UntypedStorage] = []
        self.nodes: list[Any] | None = None  # nodes built so far in the FX graph being loaded
        self.symbols: dict[tuple[Any, ...], sympy.Symbol] = {}
        self._blobs: dict[str, bytes] = {}
        self._handlers = handlers

    def blob(self, digest: object, size: object) -> bytes:
        corrupt_unless(isinstance(digest, str) and is_digest(digest), "bad blob digest")
        raw = self._blobs.get(digest)  # type: ignore[arg-type]
        if raw is None:
            try:
                fetched = self._fetch(digest)  # type: ignore[arg-type]
            except KeyError as exc:
                raise CorruptEntryError(f"missing blob {digest}") from exc
            corrupt_unless(isinstance(fetched, (bytes, bytearray, memoryview)), "blob is not bytes")
            if self.verify and content_digest(fetched) != digest:
                raise CorruptEntryError(f"blob {digest} fails its digest")
            raw = bytes(fetched) if type(fetched) is not bytes else fetched  # type: ignore[assignment]
            self._blobs[digest] = raw  # type: ignore[index]
        corrupt_unless(len(raw) == size, f"blob {digest} has {len(raw)} bytes, document says {size}")
        return raw

    def dec(self, x: Any, depth: int) -> Any:
        t = type(x)
        if t is list:
            if depth >= MAX_DEPTH:
                raise CorruptEntryError(f"document nests deeper than {MAX_DEPTH}")
            if x and type(x[0]) is _Mark:
                handler = self._handlers.get(x[0].code)
                corrupt_unless(handler is not None, f"unknown ext code {x[0].code}")
                return handler(self, x, depth + 1)  # type: ignore[misc]
            return [self.dec(v, depth + 1) if type(v) in _WALK else v for v in x]
        if t is dict:
            if depth >= MAX_DEPTH:
                raise CorruptEntryError(f"document nests deeper than {MAX_DEPTH}")
            return {k: self.dec(v, depth + 1) if type(v) in _WALK else v for k, v in x.items()}
        corrupt_unless(t not in _WALK, "ext value outside a tagged array")
        return x

    def dec_items(self, a: list[Any], depth: int, start: int = 1) -> list[Any]:
        return [self.dec(v, depth) if type(v) in _WALK else v for v in a[start:]]

    def dec_pairs(self, a: list[Any], depth: int, start: int = 1) -> list[tuple[Any, Any]]:
        items = self.dec_items(a, depth, start)
        corrupt_unless(len(items) % 2 == 0, "odd number of mapping items")
        return list(zip(items[::2], items[1::2]))


# Types Python compares natively: ``==`` between two of them runs no Python-level code.
_NATIVE = frozenset({type(None), bool, int, float, complex, str, bytes})


def _comparable(a: Any, b: Any, depth: int = 0) -> bool:
    """Whether ``a == b`` is safe to run for two decoded values whose hashes collide.

    Safe: natively compared scalars, sympy values (against each other or such scalars),
    and tuples of those compared position by position.  Anything else is refused, because
    comparing it may run code chosen by the document: sympy's ``Number.__eq__`` sympifies
    a tuple or list it is compared with, and ``sympify`` parses the strings inside with
    ``eval``; records compare their fields the same way.  Legitimate documents have no
    such collisions (their sets and dicts held distinct values when they were written).
    """
    if a is b:
        return True
    if (type(a) in _NATIVE or isinstance(a, sympy.Basic)) and (type(b) in _NATIVE or isinstance(b, sympy.Basic)):
        return True
    if type(a) is tuple and type(b) is tuple and depth < MAX_DEPTH:
        return len(a) != len(b) or all(_comparable(x, y, depth + 1) for x, y in zip(a, b))
    return False


def _hashable(keys: list[Any], build: Callable[[], Any]) -> Any:
    """``build()`` a set or dict of decoded ``keys`` once no two of them would be compared
    with ``==`` unless that is safe (:func:`_comparable`): sets and dicts call ``__eq__``
    exactly on hash collisions, so the hashes are checked first."""
    buckets: dict[int, list[Any]] = {}
    try:
        for key in keys:
            bucket = buckets.setdefault(hash(key), [])
            if not all(_comparable(other, key) for other in bucket):
                raise CorruptEntryError("two keys or elements collide in hash and may not be compared")
            bucket.append(key)
        return build()
    except TypeError as exc:  # an unhashable key or element
        raise CorruptEntryError(f"bad key or element: {exc}") from exc


def _dec_bigint(d: Decoder, a: list[Any], depth: int) -> int:
    corrupt_unless(len(a) == 2 and type(a[1]) is bytes and 0 < len(a[1]) <= _MAX_BIGINT_BYTES, "bad bigint")
    return int.from_bytes(a[1], "little", signed=True)


def _dec_complex(d: Decoder, a: list[Any], depth: int) -> complex:
    corrupt_unless(len(a) == 3 and type(a[1]) is float and type(a[2]) is float, "bad complex")
    return complex(a[1], a[2])


def _dec_range(d: Decoder, a: list[Any], depth: int) -> range:
    items = d.dec_items(a, depth)
    corrupt_unless(len(items) == 3 and all(type(i) is int for i in items) and items[2] != 0, "bad range")
    return range(*items)


def _dec_slice(d: Decoder, a: list[Any], depth: int) -> slice:
    items = d.dec_items(a, depth)
    corrupt_unless(len(items) == 3, "bad slice")
    return slice(*items)


def _dec_blob(d: Decoder, a: list[Any], depth: int) -> bytes:
    corrupt_unless(len(a) == 3, "bad blob reference")
    return d.blob(a[1], a[2])


def _dec_bytearray(d: Decoder, a: list[Any], depth: int) -> bytearray:
    inner = d.dec(a[1], depth) if len(a) == 2 else None
    corrupt_unless(type(inner) is bytes, "bad bytearray")
    return bytearray(inner)  # type: ignore[arg-type]


def _dec_defaultdict(d: Decoder, a: list[Any], depth: int) -> collections.defaultdict[Any, Any]:
    corrupt_unless(len(a) >= 2, "bad defaultdict")
    factory = d.dec(a[1], depth)
    corrupt_unless(factory is None or callable(factory), "defaultdict factory is not callable")
    pairs = d.dec_pairs(a, depth, 2)
    return _hashable([k for k, _ in pairs], lambda: collections.defaultdict(factory, pairs))


def _dec_partial(d: Decoder, a: list[Any], depth: int) -> functools.partial[Any]:
    corrupt_unless(len(a) == 4, "bad partial")
    func, args, kwargs = (d.dec(x, depth) for x in a[1:])
    corrupt_unless(callable(func) and type(args) is list and type(kwargs) is dict, "bad partial")
    # getattr bound to stored arguments would be attribute access spelled by the document.
    corrupt_unless(func is not getattr, "a partial of getattr")
    return functools.partial(func, *args, **kwargs)


def _dec_fn(d: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 2, "bad callable reference")
    return d.allow.resolve_callable(a[1])


def _dec_obj(d: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 3, "bad object record")
    entry = d.allow.class_by_name(a[1])
    cls, s = entry.cls, entry.strategy
    payload = d.dec(a[2], depth)
    if s == "custom":
        return entry.decode(payload)  # type: ignore[misc]
    if s == "enum":
        # Enum lookup hashes and compares the payload with the members' values: plain only.
        corrupt_unless(type(payload) in _NATIVE, f"bad {entry.name} value")
        try:
            return cls(payload)
        except ValueError as exc:
            raise CorruptEntryError(f"{entry.name} has no member {payload!r}") from exc
    if s == "namedtuple":
        n_fields = len(cls._fields)  # type: ignore[attr-defined]
        corrupt_unless(type(payload) is list and len(payload) == n_fields, f"bad {entry.name} fields")
        return cls._make(payload)  # type: ignore[attr-defined]  # tuple.__new__: runs no class code
    corrupt_unless(type(payload) is dict, f"bad {entry.name} state")
    if s == "dataclass":
        names = {f.name for f in fields(cls)}
        if set(payload) != names:
            raise IncompatibleEntryError(f"{entry.name} fields changed: stored {sorted(payload)}")
    else:
        # Instance state may not shadow a method (a stored `forward` would make calling the
        # module run whatever allowlisted callable the document chose), nor plant a protocol
        # hook such as sympy's `_sympy_` (see check_instance_state).
        check_instance_state(cls, payload)
    if entry.check is not None:
        entry.check(payload)
    obj = object.__new__(cls)
    if s == "dict":
        obj.__dict__.update(payload)
    else:
        for k, v in payload.items():
            object.__setattr__(obj, k, v)  # also sets frozen dataclass fields, as their __init__ does
    return obj


def _dec_collection(kind: Callable[[list[Any]], Any], d: Decoder, a: list[Any], depth: int) -> Any:
    items = d.dec_items(a, depth)
    return _hashable(items, lambda: kind(items))


def _dec_mapping(kind: Callable[[list[tuple[Any, Any]]], Any], d: Decoder, a: list[Any], depth: int) -> Any:
    pairs = d.dec_pairs(a, depth)
    return _hashable([k for k, _ in pairs], lambda: kind(pairs))


def plain_tag_handlers() -> dict[int, DecodeHandler]:
    """Decoders of plain Python values, by tag code."""
    h: dict[Tag, DecodeHandler] = {
        Tag.TUPLE: lambda d, a, dp: tuple(d.dec_items(a, dp)),
        Tag.DICT: lambda d, a, dp: _dec_mapping(dict, d, a, dp),
        Tag.SET: lambda d, a, dp: _dec_collection(set, d, a, dp),
        Tag.FROZENSET: lambda d, a, dp: _dec_collection(frozenset, d, a, dp),
        Tag.ORDERED_DICT: lambda d, a, dp: _dec_mapping(collections.OrderedDict, d, a, dp),
        Tag.ORDERED_SET: lambda d, a, dp: _dec_collection(OrderedSet, d, a, dp),
        Tag.DEFAULT_DICT: _dec_defaultdict, Tag.BIGINT: _dec_bigint, Tag.COMPLEX: _dec_complex,
        Tag.SLICE: _dec_slice, Tag.RANGE: _dec_range, Tag.ELLIPSIS: lambda d, a, dp: ...,
        Tag.BLOB: _dec_blob, Tag.BYTEARRAY: _dec_bytearray, Tag.PARTIAL: _dec_partial,
        Tag.OBJ: _dec_obj, Tag.FN: _dec_fn,
    }
    return {int(k): v for k, v in h.items()}
