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
:class:`artcache.pickler.core.Tag`).  ExtType never appears anywhere else, so a plain
list and a typed value cannot be confused.  ``storages`` lists each distinct tensor
storage once (``[digest | inline bytes | None for meta, nbytes, device type, index]``);
tensors refer to it by index, which is how views keep sharing one storage after a load.

Determinism: the document depends only on the object graph: dicts keep insertion order,
sets are sorted by the bytes of their encoded elements (never by hash, so string sets do
not depend on PYTHONHASHSEED), and no ids, addresses or times are written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import sympy
import torch
import torch.utils._pytree as pytree
from torch.fx.immutable_collections import immutable_dict, immutable_list

from artcache.digest import content_digest
from artcache.errors import CorruptEntryError, IncompatibleEntryError, Uncacheable
from artcache.pickler import fx_codec
from artcache.pickler import torch_codec as tc
from artcache.pickler.allowlist import Allowlist, TensorSpec, default_allowlist
from artcache.pickler.core import (
    MAX_DEPTH,
    Decoder,
    DecodeHandler,
    Encoder,
    Handler,
    Tag,
    corrupt_unless,
    ext_hook,
    plain_tag_handlers,
    plain_type_handlers,
)

__all__ = [
    "FORMAT_VERSION", "MAX_DEPTH", "Allowlist", "Pickled", "TensorSpec", "default_allowlist",
    "dumps", "hash_object", "loads",
]

MAGIC = b"ACPK"
FORMAT_VERSION = 1
_HEADER = MAGIC + FORMAT_VERSION.to_bytes(2, "big")


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
    return _pack(Encoder(allow or default_allowlist(), for_hashing, inline_limit, _type_handlers(), _resolve), obj)


def _pack(enc: Encoder, obj: Any) -> Pickled:
    root = enc.enc(obj, 0)
    try:
        packed = msgpack.packb([root, enc.storages], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a str with lone surrogates
        raise Uncacheable("not-encodable", str(exc)) from exc
    return Pickled(_HEADER + packed, enc.blobs)


def hash_object(obj: Any, *, allow: Allowlist | None = None, lifted_inputs: bool = False) -> str:
    """SHA-256 hex of the canonical form of ``obj``: a cache-key factor.

    The document names every blob by its SHA-256, so hashing the document alone covers
    tensor contents too.  ``lifted_inputs``: the parameters and buffers of every
    GraphModule in ``obj`` are inputs of the compiled program (AOTAutograd lifts them and
    reads them at each call), so only their dtype, shape, strides, device type and grad
    flag are hashed, not their values.
    """
    enc = Encoder(allow or default_allowlist(), True, 4096, _type_handlers(), _resolve)
    enc.lifted_inputs = lifted_inputs
    return content_digest(_pack(enc, obj).data)


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
    payload = view[len(_HEADER):]
    n = len(payload)
    try:
        # Limits from the input's length: no string, array or map may claim more items
        # than there are bytes left, and tag markers are the only extension values (empty).
        body = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, use_list=True, ext_hook=ext_hook,
            max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n // 2, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # truncated, bad UTF-8, too deep
        raise CorruptEntryError(f"malformed msgpack document: {exc}") from exc
    corrupt_unless(type(body) is list and len(body) == 2 and type(body[1]) is list, "bad document layout")
    dec = Decoder(blobs, map_location, allow or default_allowlist(), symbolic, verify, _tag_handlers())
    dec.storages = [tc.build_storage(dec, rec) for rec in body[1]]
    return dec.dec(body[0], 0)




# -- the handler tables -------------------------------------------------------------------------
@functools.cache
def _type_handlers() -> dict[type, Handler]:
    h = plain_type_handlers()
    h.update({
        immutable_list: h[list], immutable_dict: h[dict],  # FX stores node args as these
        torch.Tensor: tc.encode_tensor, torch.nn.Parameter: tc.encode_tensor,
        torch.dtype: tc.encode_named, torch.memory_format: tc.encode_named, torch.layout: tc.encode_named,
        torch.device: tc.encode_device, torch.Size: tc.encode_size,
        torch.SymInt: tc.encode_sym, torch.SymFloat: tc.encode_sym, torch.SymBool: tc.encode_sym,
        torch.fx.Node: fx_codec.encode_node_ref,
    })
    return h


def _resolve(t: type) -> Handler | None:
    """Encoders for subclasses of the types above; ``None``: ask the allowlist."""
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
    return None


@functools.cache
def _tag_handlers() -> dict[int, DecodeHandler]:
    h = plain_tag_handlers()
    h.update({int(k): v for k, v in {
        Tag.OP: tc.decode_op, Tag.OP_PACKET: tc.decode_op_packet, Tag.HOP: tc.decode_hop,
        Tag.DTYPE: tc.decode_dtype, Tag.DEVICE: tc.decode_device, Tag.SIZE: tc.decode_size,
        Tag.MEMORY_FORMAT: tc.decode_memory_format, Tag.LAYOUT: tc.decode_layout,
        Tag.TENSOR: tc.decode_tensor, Tag.SYM: tc.decode_sym, Tag.SYMPY: tc.decode_sympy,
        Tag.TREESPEC: tc.decode_treespec,
        Tag.GRAPH_MODULE: fx_codec.decode_graph_module, Tag.NODE: fx_codec.decode_node_ref,
    }.items()})
    return h
