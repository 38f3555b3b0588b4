"""Manifest schema (the ``ac/`` keyspace) and its envelope: format version and signature.

On the wire a manifest is a binary *envelope* (integers little-endian)::

    magic      b"ARTCACHE"                      8 bytes
    version    u32                              FORMAT_VERSION
    signer     u8 length (0 or 16)  | signature u8 length (0 or 64)
    core       u32 length           | summary   u32 length
    signer id (ASCII hex), signature, core (msgpack), summary (msgpack)

Everything a reader needs before trusting a manifest sits at fixed offsets, so a lookup
checks the sizes, then the signature over the raw bytes, and only then parses anything.
The signature (Ed25519, :mod:`artcache.signing`) covers :func:`signed_message`: a SHA-256
over the magic, version, both lengths, the core and the summary; the core names every blob
by its SHA-256, so one signature covers the whole entry.

The *core* is what loading needs (key, factors, environment, producer, times, blobs); it
is read field by field against its schema (:class:`_CoreReader`), never as free-form
msgpack, so no document can make a lookup build more objects than the fields it names.
The *summary* is plain data for ``artcache inspect``, ``ls`` and ``explain``; a lookup
never parses it.  Both sizes are capped (:data:`MAX_MANIFEST_BYTES`, :data:`MAX_CORE_BYTES`)
before a byte is parsed.  Format version 1 was a msgpack array; such entries read as
incompatible (a miss), like any other version.

Write order is the commit protocol: blobs first, the manifest last.  A manifest that is
visible therefore names blobs that were fully written (they may since have been evicted,
which reads as a miss).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .digest import is_digest
from .errors import CorruptEntryError, IncompatibleEntryError

MAGIC = b"ARTCACHE"
FORMAT_VERSION = 2
# Manifests are kilobytes (graph text is capped at 64 KiB); anything claiming more than
# this is refused before it is read.  A lookup holds at most this many bytes of a manifest
# and parses at most MAX_CORE_BYTES of them; the tools that parse a summary build at most
# some tens of bytes of Python objects per byte of it.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CORE_BYTES = 1 << 20
MAX_BLOBS = 1 << 13
MAX_BLOB_SIZE = 1 << 40
SIGNER_ID_CHARS = 16
SIGNATURE_BYTES = 64
# The largest string and map a core may hold (environment values, factor maps).
_MAX_CORE_STR = 1 << 16
_MAX_CORE_MAP = 4096
_HEADER = struct.Struct("<8sIBBII")
_SIGNED_FIELDS = struct.Struct("<8sIII")
_SIGNATURE_CONTEXT = b"artcache manifest v2\0"
# How a format-1 envelope starts: msgpack fixarray(5), bin8(8) b"ARTCACHE".
_V1_PREFIX = b"\x95\xc4\x08" + MAGIC


class BlobRole:
    """What a blob of an entry is (``BlobRef.role``).

    ``OBJECT``   the pickled compile result (artcache's pickler, msgpack)
    ``DATA``     out-of-band bytes of a pickled document (tensor storages, large byte
                 strings), ``name`` = their digest
    ``KERNEL``   a C++ kernel library, ``name`` = ``<CppCodeCache class>:<input digest>``
    ``EXTERN_KERNELS``  (optional) import paths of the callables generated wrappers call
                 as ``extern_kernels.<name>`` (a hit can then skip Inductor's compiler)
    ``TUNING``   (GPU, optional) autotuning done at the first runs after the compile
    ``FROZEN``   (frozen graphs only) the flat arguments the compiled forward still takes;
                 its parameters and buffers are constants of the pickled graph
    """

    OBJECT = "object"
    DATA = "data"
    KERNEL = "kernel"
    EXTERN_KERNELS = "extern_kernels"
    TUNING = "tuning"
    FROZEN = "frozen"


class SummaryKey:
    """Keys of ``Manifest.summary``: plain data for ``artcache inspect`` and ``explain``,
    written at save and never needed to load an entry (so a reader tolerates any of them
    missing).  Values: ``TITLE`` str; ``FUNCTION`` str (the compiled function and its
    file:line, or ""); ``KIND`` str ("inference" or "training", with ", frozen"); ``INPUTS``/``GUARDS`` lists of str; ``GRAPH`` the FX
    graph's code (capped); ``KERNELS``/``CONSTANTS``/``AUTOTUNE`` lists of maps;
    ``GENERATED_SOURCE_BYTES`` int; ``COMPILE_SECONDS`` float; ``FACTOR_VALUES`` map of the
    readable values behind each key factor."""

    TITLE = "title"
    FUNCTION = "function"
    KIND = "kind"
    INPUTS = "inputs"
    GUARDS = "guards"
    GRAPH = "graph"
    KERNELS = "kernels"
    CONSTANTS = "constants"
    AUTOTUNE = "autotune"
    GENERATED_SOURCE_BYTES = "generated_source_bytes"
    COMPILE_SECONDS = "compile_seconds"
    FACTOR_VALUES = "factor_values"


@dataclass(frozen=True)
class BlobRef:
    """One blob of an entry.  ``role`` says what it is (:class:`BlobRole`); ``name`` is a
    label whose meaning depends on the role.  ``digest`` and ``size`` describe the stored
    bytes; ``encoding`` says how to get the blob from them (``""``: they are the blob;
    ``"zstd"``: a frame that decompresses to ``raw_size`` bytes, :mod:`artcache.blob_codec`).
    ``raw_size`` is ``None`` for a blob stored as it is."""

    role: str
    digest: str
    size: int
    name: str = ""
    encoding: str = ""
    raw_size: int | None = None


@dataclass(frozen=True)
class Manifest:
    key: str
    factors: Mapping[str, str]
    environment: Mapping[str, str]
    created: float
    producer: str
    blobs: tuple[BlobRef, ...]
    # Plain data for the tools; empty in a manifest a lookup returned (it is not parsed).
    summary: Mapping[str, Any] = field(default_factory=dict)
    # The compile time this entry saves at each hit (also in the summary, for reading).
    compile_seconds: float = 0.0

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs)

    def blob(self, role: str) -> BlobRef:
        for ref in self.blobs:
            if ref.role == role:
                return ref
        raise CorruptEntryError(f"entry {self.key[:16]} has no {role!r} blob")


@dataclass(frozen=True)
class LoadedEntry:
    """A manifest and its blobs, fetched and verified, not yet deserialized."""

    manifest: Manifest
    blobs: Mapping[str, bytes]  # digest -> bytes

    def blob(self, role: str) -> bytes:
        return self.blobs[self.manifest.blob(role).digest]


@dataclass(frozen=True)
class NewBlob:
    """A blob to save with an entry (:class:`BlobRole` ``role``, label ``name``)."""

    role: str
    data: bytes
    name: str = ""


@dataclass(frozen=True)
class Envelope:
    """A manifest's envelope, checked for shape and size, core and summary not parsed.
    ``core`` and ``summary`` are views into the stored bytes (no copies)."""

    version: int
    core: bytes | memoryview
    summary: bytes | memoryview
    signature: bytes | None = None
    signer: str | None = None

    @property
    def signed_message(self) -> bytes:
        return signed_message(self.version, self.core, self.summary)


def signed_message(version: int, core: bytes | memoryview, summary: bytes | memoryview) -> bytes:
    """What a signature signs: a context string and the SHA-256 of the signed fields.

    Hashing first lets the raw stored bytes be checked as they are (views, no copy), and
    binds the lengths, so bytes cannot move between core and summary."""
    digest = hashlib.sha256(_SIGNED_FIELDS.pack(MAGIC, version, len(core), len(summary)))
    digest.update(core)
    digest.update(summary)
    return _SIGNATURE_CONTEXT + digest.digest()


# -- encoding --------------------------------------------------------------------------
def encode_parts(manifest: Manifest) -> tuple[bytes, bytes]:
    """The core and the summary of ``manifest`` (msgpack each); refuses sizes a reader
    would refuse, so a writer never stores an entry nobody can load."""
    core = {
        "key": manifest.key,
        "created": float(manifest.created),
        "producer": manifest.producer,
        "compile_seconds": float(manifest.compile_seconds),
        "factors": dict(sorted(manifest.factors.items())),
        "environment": dict(sorted(manifest.environment.items())),
        # [role, digest, size, name], and for an encoded blob also [encoding, raw_size].
        "blobs": [[b.role, b.digest, b.size, b.name, *([b.encoding, b.raw_size] if b.encoding else [])]
                  for b in manifest.blobs],
    }
    try:
        parts = msgpack.packb(core, use_bin_type=True), msgpack.packb(dict(manifest.summary), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptEntryError(f"manifest summary is not plain data: {exc}") from exc
    if len(parts[0]) > MAX_CORE_BYTES or len(manifest.blobs) > MAX_BLOBS:
        raise CorruptEntryError(f"manifest names {len(manifest.blobs)} blobs in {len(parts[0])} bytes, over the limits")
    if _HEADER.size + SIGNER_ID_CHARS + SIGNATURE_BYTES + len(parts[0]) + len(parts[1]) > MAX_MANIFEST_BYTES:
        raise CorruptEntryError(f"manifest summary is {len(parts[1])} bytes, over the {MAX_MANIFEST_BYTES} limit")
    return parts


def encode_envelope(
    core: bytes, summary: bytes, signature: bytes | None = None, signer: str | None = None
) -> bytes:
    signer_id = (signer or "").encode("ascii")
    sig = signature or b""
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(signer_id), len(sig), len(core), len(summary))
    return b"".join((header, signer_id, sig, core, summary))


def encode_manifest(manifest: Manifest) -> bytes:
    """Unsigned envelope bytes.  :func:`artcache.signing.sign_envelope` adds a signature."""
    return encode_envelope(*encode_parts(manifest))


# -- decoding --------------------------------------------------------------------------
def decode_envelope(data: bytes | memoryview) -> Envelope:
    """Check the envelope's shape and sizes; parse nothing else."""
    view = memoryview(data)
    if len(view) > MAX_MANIFEST_BYTES:
        raise CorruptEntryError(f"manifest is {len(view)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    if view[: len(_V1_PREFIX)] == _V1_PREFIX:
        raise IncompatibleEntryError(f"manifest format version 1; this artcache reads {FORMAT_VERSION}")
    if len(view) < _HEADER.size:
        raise CorruptEntryError("not an artcache manifest (shorter than its header)")
    magic, version, signer_len, sig_len, core_len, summary_len = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CorruptEntryError("not an artcache manifest (bad magic)")
    if version != FORMAT_VERSION:
        raise IncompatibleEntryError(f"manifest format version {version}; this artcache reads {FORMAT_VERSION}")
    if (signer_len, sig_len) not in ((0, 0), (SIGNER_ID_CHARS, SIGNATURE_BYTES)):
        raise CorruptEntryError(f"manifest signer/signature lengths {signer_len}/{sig_len}")
    if core_len > MAX_CORE_BYTES:
        raise CorruptEntryError(f"manifest core is {core_len} bytes, over the {MAX_CORE_BYTES} limit")
    start = _HEADER.size + signer_len + sig_len
    if start + core_len + summary_len != len(view):
        raise CorruptEntryError("manifest lengths do not add up (truncated or padded)")
    signer = bytes(view[_HEADER.size : _HEADER.size + signer_len])
    if signer and not all(c in b"0123456789abcdef" for c in signer):
        raise CorruptEntryError("manifest signer id is not hex")
    return Envelope(
        version,
        view[start : start + core_len],
        view[start + core_len :],
        bytes(view[_HEADER.size + signer_len : start]) or None,
        signer.decode("ascii") or None,
    )


class _CoreReader:
    """Reads the core field by field.  Each value's msgpack type byte is checked before it
    is unpacked, so where the schema wants a string or a number no container can appear,
    and headers are checked against limits before their items are read: the objects built
    are the fields the schema names, at most ``MAX_BLOBS`` blob records of them."""

    _STR = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB}
    _NUMBER = frozenset(range(0x00, 0x80)) | frozenset(range(0xE0, 0x100)) | frozenset(range(0xCA, 0xD4))

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=True, max_buffer_size=max(1, len(self._data)),
            max_str_len=_MAX_CORE_STR, max_bin_len=0, max_ext_len=0,
            max_array_len=MAX_BLOBS, max_map_len=_MAX_CORE_MAP,
        )
        self._unpacker.feed(self._data)

    def _scalar(self, kinds: frozenset[int], what: str) -> Any:
        at = self._unpacker.tell()
        _expect(at < len(self._data) and self._data[at] in kinds, f"{what} has the wrong type")
        return self._unpacker.unpack()

    def text(self, what: str) -> str:
        return self._scalar(self._STR, what)  # type: ignore[no-any-return]

    def number(self, what: str) -> int | float:
        value = self._scalar(self._NUMBER, what)
        _expect(type(value) in (int, float), f"{what} is not a number")
        return value  # type: ignore[no-any-return]

    def array(self, what: str) -> int:
        n: int = self._unpacker.read_array_header()
        _expect(n <= MAX_BLOBS, f"{what} holds {n} items, over the {MAX_BLOBS} limit")
        return n

    def _map(self, what: str) -> int:
        n: int = self._unpacker.read_map_header()
        _expect(n <= _MAX_CORE_MAP, f"{what} holds {n} items, over the {_MAX_CORE_MAP} limit")
        return n

    def str_map(self, what: str) -> dict[str, str]:
        return {self.text(what): self.text(what) for _ in range(self._map(what))}

    def fields(self) -> int:
        return self._map("the core")

    def end(self) -> None:
        _expect(self._unpacker.tell() == len(self._data), "trailing bytes after the core")


_CORE_FIELDS = frozenset({"key", "created", "producer", "compile_seconds", "factors", "environment", "blobs"})


def decode_core(core: bytes | memoryview) -> Manifest:
    """The manifest's core (everything loading needs); ``summary`` stays empty."""
    reader = _CoreReader(core)
    values: dict[str, Any] = {}
    try:
        for _ in range(reader.fields()):
            name = reader.text("field name")
            _expect(name in _CORE_FIELDS and name not in values, f"unknown or repeated field {name!r}")
            if name in ("key", "producer"):
                values[name] = reader.text(name)
            elif name in ("created", "compile_seconds"):
                values[name] = float(reader.number(name))
            elif name in ("factors", "environment"):
                values[name] = reader.str_map(name)
            else:
                values[name] = tuple(_blob(reader) for _ in range(reader.array("blobs")))
        reader.end()
    except (msgpack.UnpackException, ValueError) as exc:  # truncated, over a limit, wrong type
        raise CorruptEntryError(f"manifest core is not valid: {exc}") from exc
    missing = _CORE_FIELDS - set(values)
    _expect(not missing, f"missing fields {sorted(missing)}")
    _expect(is_digest(values["key"]), "key is not a sha256 digest")
    return Manifest(
        key=values["key"], factors=values["factors"], environment=values["environment"],
        created=values["created"], producer=values["producer"], blobs=values["blobs"],
        compile_seconds=values["compile_seconds"],
    )


def _blob(reader: _CoreReader) -> BlobRef:
    items = reader.array("blob")
    _expect(items in (4, 6), "blob entry is not [role, digest, size, name(, encoding, raw_size)]")
    role, digest, size, name = reader.text("role"), reader.text("digest"), reader.number("size"), reader.text("name")
    _expect(is_digest(digest), f"blob digest {digest[:80]!r} is not sha256")
    _expect(type(size) is int and 0 <= size <= MAX_BLOB_SIZE, f"blob size {size!r} out of range")
    if items == 4:
        return BlobRef(role, digest, size, name)  # type: ignore[arg-type]
    encoding, raw_size = reader.text("encoding"), reader.number("raw size")
    _expect(0 < len(encoding) <= 16, "blob encoding is not a short name")
    _expect(type(raw_size) is int and 0 <= raw_size <= MAX_BLOB_SIZE, f"blob raw size {raw_size!r} out of range")
    return BlobRef(role, digest, size, name, encoding, raw_size)  # type: ignore[arg-type]


def decode_summary(summary: bytes | memoryview) -> dict[str, Any]:
    """The summary (tools only: a lookup never parses it), msgpack with every limit set
    from its length: no string, array or map can claim more than the bytes present."""
    n = len(summary)
    try:
        doc = msgpack.unpackb(
            summary, raw=False, strict_map_key=True, max_str_len=n, max_bin_len=n,
            max_array_len=n, max_map_len=n // 2, max_ext_len=0, ext_hook=_no_ext,
        )
    except (msgpack.UnpackException, ValueError) as exc:
        raise CorruptEntryError(f"manifest summary is not valid msgpack: {exc}") from exc
    _expect(isinstance(doc, dict), "summary is not a map")
    return doc  # type: ignore[no-any-return]


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} in a summary")


def _expect(cond: bool, why: str) -> None:
    if not cond:
        raise CorruptEntryError(f"malformed manifest: {why}")


def decode_manifest(data: bytes | memoryview) -> Manifest:
    """Core and summary, without any trust check (``inspect``, ``ls``, ``gc``)."""
    envelope = decode_envelope(data)
    manifest = decode_core(envelope.core)
    return Manifest(
        manifest.key, manifest.factors, manifest.environment, manifest.created, manifest.producer,
        manifest.blobs, decode_summary(envelope.summary), manifest.compile_seconds,
    )
