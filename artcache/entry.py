"""Manifest schema (the ``ac/`` keyspace) and its envelope: format version and signature.

On the wire a manifest is a msgpack *envelope*::

    [MAGIC, FORMAT_VERSION, body: bytes, signature: bytes | None, signer: str | None]

Format versions: 1 lists each blob as ``[role, digest, size, name]``; 2 adds
``encoding, raw_size`` (``artcache.blob_codec``: ``"zstd"`` for a compressed blob, whose
``digest`` and ``size`` are those of the stored frame).  A manifest is written in the
oldest version that can hold it (:func:`format_version`): 2 only when a blob has an
encoding, so an artcache that reads only 1 still reads every entry without one and refuses
the others as incompatible (a miss).  This artcache reads both.

``body`` is the msgpack encoding of :class:`Manifest`.  A signature (Ed25519, see
:mod:`artcache.signing`) covers ``MAGIC || version || body``; the body names every blob by
its SHA-256, so one signature covers the whole entry.  Decoding checks the envelope
before it looks inside the body, so trust can be enforced before anything is parsed.

Write order is the commit protocol: blobs first, the manifest last.  A manifest that is
visible therefore names blobs that were fully written (they may since have been evicted,
which reads as a miss).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .digest import is_digest
from .errors import CorruptEntryError, IncompatibleEntryError

MAGIC = b"ARTCACHE"
FORMAT_VERSION = 2  # the newest this artcache writes
READABLE_VERSIONS = (1, 2)
# The format generation in every cache key (``environment.fingerprint``).  It changes only
# when entries written before can no longer be read: this artcache still reads version 1,
# so the entries older writers left keep being found under the same keys.
KEY_FORMAT = 1
# Manifests are small (kilobytes).  Anything claiming more is refused before parsing.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_MAX_BLOB_SIZE = 1 << 40


class BlobRole:
    """What a blob of an entry is (``BlobRef.role``).

    ``OBJECT``   the pickled compile result (artcache's pickler, msgpack)
    ``DATA``     out-of-band bytes of a pickled document (tensor storages, large byte
                 strings), ``name`` = their digest
    ``KERNEL``   a C++ kernel library, ``name`` = ``<CppCodeCache class>:<input digest>``
    ``EXTERN_KERNELS``  (optional) import paths of the callables generated wrappers call
                 as ``extern_kernels.<name>`` (a hit can then skip Inductor's compiler)
    ``TUNING``   (GPU, optional) autotuning done at the first runs after the compile
    """

    OBJECT = "object"
    DATA = "data"
    KERNEL = "kernel"
    EXTERN_KERNELS = "extern_kernels"
    TUNING = "tuning"


class SummaryKey:
    """Keys of ``Manifest.summary``: plain data for ``artcache inspect`` and ``explain``,
    written at save and never needed to load an entry (so a reader tolerates any of them
    missing).  Values: ``TITLE`` str; ``INPUTS``/``GUARDS`` lists of str; ``GRAPH`` the FX
    graph's code (capped); ``KERNELS``/``CONSTANTS``/``AUTOTUNE`` lists of maps;
    ``GENERATED_SOURCE_BYTES`` int; ``COMPILE_SECONDS`` float; ``FACTOR_VALUES`` map of the
    readable values behind each key factor."""

    TITLE = "title"
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
    label whose meaning depends on the role.  ``digest`` and ``size`` describe the stored bytes; ``encoding`` says how to get the
    blob from them (``""``: they are the blob; ``"zstd"``: a frame that decompresses to
    ``raw_size`` bytes).  ``raw_size`` is ``None`` for a blob stored as it is."""

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
    summary: Mapping[str, Any] = field(default_factory=dict)

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
    """A decoded envelope: the signed bytes and the signature, body not yet parsed."""

    version: int
    body: bytes
    signature: bytes | None = None
    signer: str | None = None

    @property
    def signed_bytes(self) -> bytes:
        return signed_payload(self.version, self.body)


def signed_payload(version: int, body: bytes) -> bytes:
    return MAGIC + struct.pack("<I", version) + body


# -- encoding --------------------------------------------------------------------------
def format_version(manifest: Manifest) -> int:
    """The oldest format version that holds ``manifest``: 2 if a blob has an encoding."""
    return 2 if any(b.encoding for b in manifest.blobs) else 1


def encode_body(manifest: Manifest) -> bytes:
    """The body, in the layout of :func:`format_version` of ``manifest``."""
    if format_version(manifest) == 1:
        blobs = [[b.role, b.digest, b.size, b.name] for b in manifest.blobs]
    else:
        blobs = [[b.role, b.digest, b.size, b.name, b.encoding, b.raw_size if b.encoding else b.size]
                 for b in manifest.blobs]
    doc = {
        "key": manifest.key,
        "factors": dict(sorted(manifest.factors.items())),
        "environment": dict(sorted(manifest.environment.items())),
        "created": float(manifest.created),
        "producer": manifest.producer,
        "blobs": blobs,
        "summary": dict(manifest.summary),
    }
    try:
        return msgpack.packb(doc, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptEntryError(f"manifest summary is not plain data: {exc}") from exc


def encode_envelope(
    body: bytes, signature: bytes | None = None, signer: str | None = None, version: int = FORMAT_VERSION
) -> bytes:
    return msgpack.packb([MAGIC, version, body, signature, signer], use_bin_type=True)


def encode_manifest(manifest: Manifest) -> bytes:
    """Unsigned envelope bytes.  :func:`artcache.signing.sign_envelope` adds a signature."""
    return encode_envelope(encode_body(manifest), version=format_version(manifest))


# -- decoding --------------------------------------------------------------------------
def _unpack(data: bytes, what: str) -> Any:
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptEntryError(f"{what} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError) as exc:
        raise CorruptEntryError(f"{what} is not valid msgpack: {exc}") from exc


def decode_envelope(data: bytes) -> Envelope:
    doc = _unpack(data, "manifest envelope")
    if not isinstance(doc, list) or len(doc) != 5 or doc[0] != MAGIC:
        raise CorruptEntryError("not an artcache manifest (bad magic or shape)")
    _magic, version, body, signature, signer = doc
    if not isinstance(version, int):
        raise CorruptEntryError("manifest version is not an integer")
    if version not in READABLE_VERSIONS:
        raise IncompatibleEntryError(f"manifest format version {version}; this artcache reads "
                                     f"{', '.join(map(str, READABLE_VERSIONS))}")
    if not isinstance(body, bytes):
        raise CorruptEntryError("manifest body is not bytes")
    if signature is not None and not isinstance(signature, bytes):
        raise CorruptEntryError("manifest signature is not bytes")
    if signer is not None and not isinstance(signer, str):
        raise CorruptEntryError("manifest signer is not a string")
    return Envelope(version, body, signature, signer)


def _expect(cond: bool, why: str) -> None:
    if not cond:
        raise CorruptEntryError(f"malformed manifest: {why}")


def _str_map(value: Any, what: str) -> dict[str, str]:
    _expect(isinstance(value, dict), f"{what} is not a map")
    _expect(all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()), f"{what} holds non-strings")
    return dict(value)


def decode_body(body: bytes) -> Manifest:
    doc = _unpack(body, "manifest body")
    _expect(isinstance(doc, dict), "body is not a map")
    missing = {"key", "factors", "environment", "created", "producer", "blobs", "summary"} - set(doc)
    _expect(not missing, f"missing fields {sorted(missing)}")
    _expect(isinstance(doc["key"], str) and is_digest(doc["key"]), "key is not a sha256 digest")
    _expect(isinstance(doc["created"], (int, float)), "created is not a number")
    _expect(isinstance(doc["producer"], str), "producer is not a string")
    _expect(isinstance(doc["summary"], dict), "summary is not a map")
    _expect(isinstance(doc["blobs"], list), "blobs is not a list")
    blobs = []
    for item in doc["blobs"]:
        # Version 1 lists [role, digest, size, name]: a blob stored as it is.
        _expect(isinstance(item, list) and len(item) in (4, 6),
                "blob entry is not [role, digest, size, name(, encoding, raw_size)]")
        role, digest, size, name = item[:4]
        encoding, raw_size = item[4:] if len(item) == 6 else ("", size)
        _expect(isinstance(role, str) and isinstance(name, str), "blob role/name not strings")
        _expect(isinstance(digest, str) and is_digest(digest), f"blob digest {digest!r} is not sha256")
        _expect(isinstance(size, int) and 0 <= size <= _MAX_BLOB_SIZE, f"blob size {size!r} out of range")
        _expect(isinstance(encoding, str) and len(encoding) <= 16, "blob encoding is not a short string")
        _expect(isinstance(raw_size, int) and 0 <= raw_size <= _MAX_BLOB_SIZE, f"blob raw size {raw_size!r} out of range")
        _expect(bool(encoding) or raw_size == size, "a blob stored as it is has a raw size other than its size")
        blobs.append(BlobRef(role, digest, size, name, encoding, raw_size if encoding else None))
    return Manifest(
        key=doc["key"],
        factors=_str_map(doc["factors"], "factors"),
        environment=_str_map(doc["environment"], "environment"),
        created=float(doc["created"]),
        producer=doc["producer"],
        blobs=tuple(blobs),
        summary=doc["summary"],
    )


def decode_manifest(data: bytes) -> Manifest:
    """Parse envelope and body without any trust check (``inspect``, ``ls``, ``gc``)."""
    return decode_body(decode_envelope(data).body)
