"""artcache's own graph pickler: a safe, deterministic serializer for compile objects.

Why not ``pickle`` / ``torch.save``: unpickling runs whatever callables the stream names,
so an entry fetched from a shared store would execute its writer's code before any check
could run.  This module writes a msgpack document plus out-of-band blobs and, on load,
builds *only* types named in an :class:`Allowlist`; it never calls ``pickle.loads``,
``eval``, ``exec`` or ``import`` on a name taken from stored bytes.  (The one ``exec`` in
the load path is ``torch.fx`` compiling the Python it *generates* for a rebuilt
GraphModule; every identifier that reaches that source is validated first.)

Format (``FORMAT_VERSION`` 1)::

    data  = b"ACPK" + u16 big-endian version + msgpack([root, storages])
    blobs = {sha256 hex: bytes}   tensor storages and byte strings over ``inline_limit``

``root`` uses native msgpack for None/bool/int/float/str/bytes/list and str-keyed dicts;
every other value is a *tagged array* ``[ExtType(tag, b""), *payload]`` (tags in
:class:`artcache._pickle_types.Tag`).  ExtType never appears anywhere else, so a plain
list and a typed value cannot be confused.  ``storages`` lists each distinct tensor
storage once (``[digest | inline bytes | None for meta, nbytes, device type, index]``);
tensors refer to it by index, which is how views keep sharing one storage after a load.

Determinism: the document depends only on the object graph: dicts keep insertion order,
sets are sorted by the bytes of their encoded elements (never by hash, so string sets do
not depend on PYTHONHASHSEED), and no ids, addresses or times are written.
"""

from __future__ import annotations

import collections
import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import sympy
import torch
import torch.utils._pytree as pytree
from torch.utils._ordered_set import OrderedSet

from artcache import _pickle_fx as fx_codec
from artcache import _pickle_torch as tc
from artcache._pickle_torch import EXT, corrupt_unless
from artcache._pickle_types import (
    Allowlist,
    DeferredCallable,
    Tag,
    TensorSpec,
    default_allowlist,
    qualified_name,
)
from artcache.digest import content_digest, is_digest
from artcache.errors import CorruptEntryError, IncompatibleEntryError, Uncacheable

__all__ = [
    "FORMAT_VERSION", "MAX_DEPTH", "Allowlist", "Pickled", "TensorSpec", "default_allowlist",
    "dumps", "hash_object", "loads",
]

MAGIC = b"ACPK"
FORMAT_VERSION = 1
_HEADER = MAGIC + FORMAT_VERSION.to_bytes(2, "big")
# Nesting bound on both sides: dumps refuses deeper objects (Uncacheable) and loads refuses
# deeper documents (CorruptEntryError) before Python's own recursion limit is near.
MAX_DEPTH = 200
_INT_MIN, _UINT_MAX = -(1 << 63), (1 << 64) - 1
_MAX_BIGINT_BYTES = 1 << 16


@dataclass(frozen=True)
class Pickled:
    """A serialized object: the msgpack document and the blobs it names by digest.

    The store keeps blobs content-addressed (``cas/<digest>``), so identical tensor
    storages are stored once across entries; ``data`` names every digest it needs.
    """

    data: bytes
    blobs: dict[str, bytes]


def dumps(
    obj: Any, *, for_hashing: bool = False, inline_limit: int = 4096, allow: Allowlist | None = None
) -> Pickled:
    """Serialize ``obj``; raise :class:`Uncacheable` for anything outside the allowlist.

    ``for_hashing`` writes the canonical form used for cache keys: FX node names and
    placeholder names become positions, volatile node metadata (stack traces, module
    stacks, provenance) is dropped, ``seq_nr`` is renumbered by rank and symbolic hints
    are dropped.  That form is for hashing only; load the normal form.
    """
    enc = _Encoder(allow or default_allowlist(), for_hashing, inline_limit)
    root = enc.enc(obj, 0)
    try:
        packed = msgpack.packb([root, enc.storages], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a str with lone surrogates
        raise Uncacheable("not-encodable", str(exc)) from exc
    return Pickled(_HEADER + packed, enc.blobs)


def hash_object(obj: Any, *, allow: Allowlist | None = None) -> str:
    """SHA-256 hex of the canonical form of ``obj``: a cache-key factor.

    The document names every blob by its SHA-256, so hashing the document alone covers
    tensor contents too.
    """
    return content_digest(dumps(obj, for_hashing=True, allow=allow).data)


def loads(
    data: bytes | bytearray | memoryview,
    blobs: Mapping[str, bytes] | Callable[[str], bytes],
    *,
    map_location: torch.device | str | None = None,
    allow: Allowlist | None = None,
    symbolic: Callable[[str, sympy.Basic, Any], Any] | None = None,
    verify: bool = True,
) -> Any:
    """Rebuild an object from :func:`dumps` output; constructs only allowlisted types.

    ``blobs`` maps digest -> bytes (or is a function that fetches one).  Every blob is
    checked against its SHA-256 before use unless ``verify=False``, which is only for a
    caller that has just verified these same bytes against their digest itself.
    ``map_location`` moves every non-meta storage to that device (default: the device
    type and index it was saved from).  SymInt/SymFloat/SymBool load as their sympy
    expression, or as ``symbolic(kind, expr, hint)`` (kind "i", "f" or "b") when given,
    e.g. to rebuild real SymInts on a ShapeEnv.

    Raises CorruptEntryError for anything malformed or not allowed and
    IncompatibleEntryError for another format version or an operator/device this
    installation lacks.
    """
    view = memoryview(data)
    if len(view) < len(_HEADER) or bytes(view[:4]) != MAGIC:
        raise CorruptEntryError("not an artcache pickle (bad magic)")
    version = int.from_bytes(view[4:6], "big")
    if version != FORMAT_VERSION:
        raise IncompatibleEntryError(f"pickle format version {version}, this reader has {FORMAT_VERSION}")
    try:
        body = msgpack.unpackb(
            view[len(_HEADER):], raw=False, strict_map_key=True, use_list=True, ext_hook=_ext_hook
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # truncated, bad UTF-8, too deep
        raise CorruptEntryError(f"malformed msgpack document: {exc}") from exc
    corrupt_unless(type(body) is list and len(body) == 2 and type(body[1]) is list, "bad document layout")
    dec = _Decoder(blobs, map_location, allow or default_allowlist(), symbolic, verify)
    dec.storages = [tc.build_storage(dec, rec) for rec in body[1]]
    return dec.dec(body[0], 0)


# -- encoder -----------------------------------------------------------------------------------
Handler = Callable[["_Encoder", Any, int], Any]


class _Encoder:
    """One dumps call: the blob and storage tables and the FX node context."""

    def __init__(self, allow: Allowlist, for_hashing: bool, inline_limit: int) -> None:
        self.allow = allow
        self.for_hashing = for_hashing
        self.inline_limit = inline_limit
        self.blobs: dict[str, bytes] = {}
        self.storages: list[list[Any]] = []
        self.storage_ids: dict[int, int] = {}
        self.keep: list[Any] = []
        self.node_ids: dict[Any, int] | None = None  # set while encoding an FX graph
        self._handlers: dict[type, Handler] = dict(_type_handlers())

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
        if issubclass(t, torch.Tensor):
            return tc.encode_tensor  # refuses subclasses with a reason
        if issubclass(t, torch.fx.GraphModule):
            return fx_codec.encode_graph_module
        if issubclass(t, sympy.Basic):
            return tc.encode_sympy
        if issubclass(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
            return tc.encode_op
        if issubclass(t, pytree.TreeSpec):
            return tc.encode_treespec
        entry = self.allow.class_entry(t)
        if entry is not None:
            return _encode_obj
        if issubclass(t, (type, types.FunctionType, types.BuiltinFunctionType, DeferredCallable)):
            return _encode_ref
        return _refuse


def _refuse(enc: _Encoder, obj: Any, depth: int) -> Any:
    raise Uncacheable("type-not-allowlisted", qualified_name(type(obj)))


def _encode_ref(enc: _Encoder, obj: Any, depth: int) -> list[Any]:
    return [EXT[Tag.FN], enc.allow.callable_name(obj)]


def _encode_obj(enc: _Encoder, obj: Any, depth: int) -> list[Any]:
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
        payload = {k: enc.enc(v, depth) for k, v in vars(obj).items()}
    else:
        payload = enc.enc(entry.encode(obj), depth)  # type: ignore[misc]
    return [EXT[Tag.OBJ], entry.name, payload]


def _enc_list(enc: _Encoder, obj: list[Any], depth: int) -> list[Any]:
    return [enc.enc(x, depth) for x in obj]


def _enc_tuple(enc: _Encoder, obj: tuple[Any, ...], depth: int) -> list[Any]:
    return [EXT[Tag.TUPLE], *(enc.enc(x, depth) for x in obj)]


def _enc_pairs(enc: _Encoder, obj: Mapping[Any, Any], depth: int) -> list[Any]:
    out: list[Any] = []
    for k, v in obj.items():
        out.append(enc.enc(k, depth))
        out.append(enc.enc(v, depth))
    return out


def _enc_dict(enc: _Encoder, obj: dict[Any, Any], depth: int) -> Any:
    if all(type(k) is str for k in obj):
        return {k: enc.enc(v, depth) for k, v in obj.items()}
    return [EXT[Tag.DICT], *_enc_pairs(enc, obj, depth)]


def _enc_set(enc: _Encoder, obj: set[Any] | frozenset[Any], depth: int) -> list[Any]:
    # Sorted by encoded bytes: set iteration order follows hashes, which for str depend
    # on PYTHONHASHSEED, so it differs between processes.
    items = sorted((enc.enc(x, depth) for x in obj), key=lambda e: msgpack.packb(e, use_bin_type=True))
    return [EXT[Tag.SET if type(obj) is set else Tag.FROZENSET], *items]


def _enc_bytes(enc: _Encoder, obj: bytes, depth: int) -> Any:
    if len(obj) <= enc.inline_limit:
        return obj
    return [EXT[Tag.BLOB], enc.add_blob(obj), len(obj)]


def _enc_partial(enc: _Encoder, obj: functools.partial[Any], depth: int) -> list[Any]:
    if getattr(obj, "__dict__", None):
        raise Uncacheable("partial-with-attributes")
    return [EXT[Tag.PARTIAL], enc.enc(obj.func, depth), _enc_list(enc, list(obj.args), depth),
            {k: enc.enc(v, depth) for k, v in obj.keywords.items()}]


@functools.cache
def _type_handlers() -> dict[type, Handler]:
    from torch.fx.immutable_collections import immutable_dict, immutable_list

    h: dict[type, Handler] = {
        list: _enc_list, immutable_list: _enc_list,  # FX stores node args as immutable_list
        tuple: _enc_tuple, dict: _enc_dict, immutable_dict: _enc_dict,
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
        torch.Tensor: tc.encode_tensor, torch.nn.Parameter: tc.encode_tensor,
        torch.dtype: tc.encode_named, torch.memory_format: tc.encode_named, torch.layout: tc.encode_named,
        torch.device: tc.encode_device, torch.Size: tc.encode_size,
        torch.SymInt: tc.encode_sym, torch.SymFloat: tc.encode_sym, torch.SymBool: tc.encode_sym,
        torch.fx.Node: fx_codec.encode_node_ref,
    }
    return h


# -- decoder -----------------------------------------------------------------------------------
DecodeHandler = Callable[["_Decoder", list[Any], int], Any]


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


def _ext_hook(code: int, data: bytes) -> _Mark:
    return _BAD_MARK if data else _MARKS[code]


# Values that must go through dec(): containers, and markers / msgpack Timestamps (ext -1,
# decoded by msgpack itself), which are only valid at the head of a tagged array.
_WALK = frozenset({list, dict, _Mark, msgpack.Timestamp})


class _Decoder:
    """One loads call: verified blobs, rebuilt storages and the FX node context."""

    def __init__(
        self,
        blobs: Mapping[str, bytes] | Callable[[str], bytes],
        map_location: torch.device | str | None,
        allow: Allowlist,
        symbolic: Callable[[str, sympy.Basic, Any], Any] | None,
        verify: bool,
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
        self._handlers = _tag_handlers()

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


def _hashable(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except TypeError as exc:  # an unhashable key or element
        raise CorruptEntryError(f"bad key or element: {exc}") from exc


def _dec_bigint(d: _Decoder, a: list[Any], depth: int) -> int:
    corrupt_unless(len(a) == 2 and type(a[1]) is bytes and 0 < len(a[1]) <= _MAX_BIGINT_BYTES, "bad bigint")
    return int.from_bytes(a[1], "little", signed=True)


def _dec_complex(d: _Decoder, a: list[Any], depth: int) -> complex:
    corrupt_unless(len(a) == 3 and type(a[1]) is float and type(a[2]) is float, "bad complex")
    return complex(a[1], a[2])


def _dec_range(d: _Decoder, a: list[Any], depth: int) -> range:
    items = d.dec_items(a, depth)
    corrupt_unless(len(items) == 3 and all(type(i) is int for i in items) and items[2] != 0, "bad range")
    return range(*items)


def _dec_slice(d: _Decoder, a: list[Any], depth: int) -> slice:
    items = d.dec_items(a, depth)
    corrupt_unless(len(items) == 3, "bad slice")
    return slice(*items)


def _dec_blob(d: _Decoder, a: list[Any], depth: int) -> bytes:
    corrupt_unless(len(a) == 3, "bad blob reference")
    return d.blob(a[1], a[2])


def _dec_bytearray(d: _Decoder, a: list[Any], depth: int) -> bytearray:
    inner = d.dec(a[1], depth) if len(a) == 2 else None
    corrupt_unless(type(inner) is bytes, "bad bytearray")
    return bytearray(inner)  # type: ignore[arg-type]


def _dec_defaultdict(d: _Decoder, a: list[Any], depth: int) -> collections.defaultdict[Any, Any]:
    corrupt_unless(len(a) >= 2, "bad defaultdict")
    factory = d.dec(a[1], depth)
    corrupt_unless(factory is None or callable(factory), "defaultdict factory is not callable")
    return _hashable(lambda: collections.defaultdict(factory, d.dec_pairs(a, depth, 2)))


def _dec_partial(d: _Decoder, a: list[Any], depth: int) -> functools.partial[Any]:
    corrupt_unless(len(a) == 4, "bad partial")
    func, args, kwargs = (d.dec(x, depth) for x in a[1:])
    corrupt_unless(callable(func) and type(args) is list and type(kwargs) is dict, "bad partial")
    return functools.partial(func, *args, **kwargs)


def _dec_fn(d: _Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 2, "bad callable reference")
    return d.allow.resolve_callable(a[1])


def _dec_obj(d: _Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 3, "bad object record")
    entry = d.allow.class_by_name(a[1])
    cls, s = entry.cls, entry.strategy
    payload = d.dec(a[2], depth)
    if s == "custom":
        return entry.decode(payload)  # type: ignore[misc]
    if s == "enum":
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
    obj = object.__new__(cls)
    if s == "dict":
        # Instance state may not shadow a method (e.g. a stored `forward` attribute would
        # make calling the module run whatever allowlisted callable the document chose).
        corrupt_unless(
            all(type(k) is str and not callable(getattr(cls, k, None)) for k in payload),
            f"bad {entry.name} state key",
        )
        obj.__dict__.update(payload)
    else:
        for k, v in payload.items():
            object.__setattr__(obj, k, v)  # also sets frozen dataclass fields, as their __init__ does
    return obj


@functools.cache
def _tag_handlers() -> dict[int, DecodeHandler]:
    h: dict[Tag, DecodeHandler] = {
        Tag.TUPLE: lambda d, a, dp: tuple(d.dec_items(a, dp)),
        Tag.DICT: lambda d, a, dp: _hashable(lambda: dict(d.dec_pairs(a, dp))),
        Tag.SET: lambda d, a, dp: _hashable(lambda: set(d.dec_items(a, dp))),
        Tag.FROZENSET: lambda d, a, dp: _hashable(lambda: frozenset(d.dec_items(a, dp))),
        Tag.ORDERED_DICT: lambda d, a, dp: _hashable(lambda: collections.OrderedDict(d.dec_pairs(a, dp))),
        Tag.ORDERED_SET: lambda d, a, dp: _hashable(lambda: OrderedSet(d.dec_items(a, dp))),
        Tag.DEFAULT_DICT: _dec_defaultdict, Tag.BIGINT: _dec_bigint, Tag.COMPLEX: _dec_complex,
        Tag.SLICE: _dec_slice, Tag.RANGE: _dec_range, Tag.ELLIPSIS: lambda d, a, dp: ...,
        Tag.BLOB: _dec_blob, Tag.BYTEARRAY: _dec_bytearray, Tag.PARTIAL: _dec_partial,
        Tag.OBJ: _dec_obj, Tag.FN: _dec_fn,
        Tag.OP: tc.decode_op, Tag.OP_PACKET: tc.decode_op_packet, Tag.HOP: tc.decode_hop,
        Tag.DTYPE: tc.decode_dtype, Tag.DEVICE: tc.decode_device, Tag.SIZE: tc.decode_size,
        Tag.MEMORY_FORMAT: tc.decode_memory_format, Tag.LAYOUT: tc.decode_layout,
        Tag.TENSOR: tc.decode_tensor, Tag.SYM: tc.decode_sym, Tag.SYMPY: tc.decode_sympy,
        Tag.TREESPEC: tc.decode_treespec,
        Tag.GRAPH_MODULE: fx_codec.decode_graph_module, Tag.NODE: fx_codec.decode_node_ref,
    }
    return {int(k): v for k, v in h.items()}
