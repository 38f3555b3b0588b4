"""Archives: one self-verifying file of entries and their blobs (a CI artifact; the format
names itself a bundle, its magic is kept for compatibility).

Format (all integers little-endian)::

    header   b"ARTCACHE-BUNDLE\\0" (16 bytes) | version u32
    record   kind u8 ('B' blob, 'M' manifest) | key 32 bytes | length u64 | sha256 32 bytes
             | payload (length bytes)
    trailer  kind u8 ('T') | record count u64 | sha256 of every byte before the trailer
    EOF      (nothing may follow the trailer)

A blob record's key is its SHA-256 (its ``cas/`` address); a manifest record's key is the
cache key and its payload the manifest envelope exactly as stored, so a signed manifest
stays signed.  Export writes every blob before the manifests; a manifest may only name
blobs that came before it.

Import never trusts the file: pass 1 streams it once and checks every record's digest,
every blob against its address, every manifest's envelope and core (sizes capped before a
record is read; the signature first when trusted keys are configured, as on lookup) and
the trailer.  Only a bundle that
passes completely reaches pass 2, which writes blobs (re-checked, the file may have
changed meanwhile) and then manifests, the commit points.  A refused bundle imports
nothing.  Neither pass holds more than one record in memory.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .digest import is_digest
from .entry import MAX_MANIFEST_BYTES, Manifest, decode_core, decode_envelope, decode_manifest
from .errors import ArtcacheError, CorruptEntryError, IncompatibleEntryError
from .signing import TrustPolicy
from .store import Store, ac_key, cas_key

BUNDLE_MAGIC = b"ARTCACHE-BUNDLE\0"
BUNDLE_VERSION = 1
_HEADER = struct.Struct(f"<{len(BUNDLE_MAGIC)}sI")
_RECORD = struct.Struct("<c32sQ32s")
_TRAILER = struct.Struct("<cQ32s")
KIND_BLOB, KIND_MANIFEST, KIND_TRAILER = b"B", b"M", b"T"
_MAX_BLOB_BYTES = 1 << 40
_CHUNK = 1 << 20

# progress(description, total_bytes) -> a context whose value is called with byte counts.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def _no_progress(_desc: str, _total: int) -> Iterator[Callable[[int], None]]:
    yield lambda _n: None


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


@dataclass(frozen=True)
class ExportResult:
    path: str
    entries: int
    blobs: int
    bytes: int  # file size
    skipped: tuple[Skipped, ...]


@dataclass(frozen=True)
class BundleIndex:
    """What pass 1 found in a bundle that verified completely."""

    path: str
    blobs: dict[str, tuple[int, int]]  # digest -> (payload offset, length)
    manifests: dict[str, bytes]  # cache key -> envelope bytes
    records: int
    bytes: int


@dataclass(frozen=True)
class ImportResult:
    path: str
    entries: int
    blobs_written: int
    blobs_present: int  # already in the store (content-addressed, so not rewritten)
    bytes_written: int


# -- export -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    manifests: dict[str, bytes]
    blobs: dict[str, int]  # digest -> size, in first-use order
    skipped: tuple[Skipped, ...]


def _plan_export(store: Store, keys: Sequence[str] | None) -> _Plan:
    """Pick the entries to export.  Broken entries are skipped when exporting everything
    and are an error when asked for by name."""
    explicit = keys is not None
    wanted = list(keys) if keys is not None else sorted(info.key[3:] for info in store.iterate("ac/"))
    manifests: dict[str, bytes] = {}
    blobs: dict[str, int] = {}
    skipped: list[Skipped] = []
    for key in wanted:
        raw = store.peek(ac_key(key))  # peek: exporting is not a use for LRU
        manifest, reason = _exportable(store, raw)
        if manifest is None or raw is None:
            if explicit:
                raise ArtcacheError(f"cannot export entry {key[:16]}: {reason}")
            skipped.append(Skipped(key, reason))
            continue
        manifests[key] = raw
        for ref in manifest.blobs:
            blobs.setdefault(ref.digest, ref.size)
    return _Plan(manifests, blobs, tuple(skipped))


def _exportable(store: Store, raw: bytes | None) -> tuple[Manifest | None, str]:
    """The entry's manifest if it can be exported whole, else ``None`` and why not."""
    if raw is None:
        return None, "manifest absent or unreadable"
    try:
        manifest = decode_manifest(raw)
    except (CorruptEntryError, IncompatibleEntryError) as exc:
        return None, str(exc)
    missing = [r.digest[:16] for r in manifest.blobs if not store.has(cas_key(r.digest))]
    if missing:
        return None, f"blobs absent: {', '.join(missing)}"
    return manifest, ""


class _HashingWriter:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.hasher = hashlib.sha256()
        self.records = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.hasher.update(data)

    def record(self, kind: bytes, key: str, payload: bytes) -> None:
        self.write(_RECORD.pack(kind, bytes.fromhex(key), len(payload), hashlib.sha256(payload).digest()))
        self.write(payload)
        self.records += 1


def export_bundle(
    store: Store, path: str | os.PathLike[str], keys: Sequence[str] | None = None, *, progress: Progress | None = None
) -> ExportResult:
    """Write the entries ``keys`` (default: every entry) and their blobs to ``path``.

    Written to a temp file and renamed, so ``path`` is never a half-written bundle."""
    plan = _plan_export(store, keys)
    target = Path(path)
    total = sum(plan.blobs.values()) + sum(len(m) for m in plan.manifests.values())
    progress = progress or _no_progress
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ArtcacheError(f"cannot write bundle {target}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f, progress("export", total) as advance:
            out = _HashingWriter(f)
            out.write(_HEADER.pack(BUNDLE_MAGIC, BUNDLE_VERSION))
            for digest in plan.blobs:  # blobs first: a manifest only names what came before
                data = store.peek(cas_key(digest))
                if data is None or hashlib.sha256(data).hexdigest() != digest:
                    raise CorruptEntryError(f"blob {digest[:16]} vanished or fails its sha256; run artcache verify")
                out.record(KIND_BLOB, digest, data)
                advance(len(data))
            for key, envelope in plan.manifests.items():
                out.record(KIND_MANIFEST, key, envelope)
                advance(len(envelope))
            f.write(_TRAILER.pack(KIND_TRAILER, out.records, out.hasher.digest()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise ArtcacheError(f"cannot write bundle {target}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportResult(str(target), len(plan.manifests), len(plan.blobs), target.stat().st_size, plan.skipped)


# -- verification (pass 1) ---------------------------------------------------------------
class _Reader:
    """Reads a bundle front to back, hashing every byte it consumes."""

    def __init__(self, f: BinaryIO, advance: Callable[[int], None]) -> None:
        self.f = f
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.advance = advance

    def exact(self, n: int, what: str, *, hashed: bool = True) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptEntryError(f"bundle truncated in {what} at byte {self.offset + len(data)}")
        if hashed:
            self.hasher.update(data)
        self.offset += n
        self.advance(n)
        return data

    def payload(self, n: int, keep: bool) -> tuple[bytes, bytes]:
        """(sha256 of the next ``n`` bytes, the bytes if ``keep`` else b"")."""
        digest = hashlib.sha256()
        kept: list[bytes] = []
        left = n
        while left:
            chunk = self.exact(min(left, _CHUNK), "a record payload")
            digest.update(chunk)
            if keep:
                kept.append(chunk)
            left -= len(chunk)
        return digest.digest(), b"".join(kept)


def _refuse(why: str) -> CorruptEntryError:
    return CorruptEntryError(f"bundle refused: {why}")


def verify_bundle(
    path: str | os.PathLike[str], *, trust: TrustPolicy | None = None, progress: Progress | None = None
) -> BundleIndex:
    """Check the whole bundle (pass 1); raise ``CorruptEntryError`` (or
    ``UntrustedEntryError`` under ``trust``) on the first problem."""
    progress = progress or _no_progress
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115 - closed below; a with-block would nest too deep
    except OSError as exc:
        raise ArtcacheError(f"cannot read bundle {path}: {exc}") from exc
    with f, progress("verify", size) as advance:
        try:
            return _verify_stream(_Reader(f, advance), str(path), size, trust)
        except OSError as exc:
            raise ArtcacheError(f"cannot read bundle {path}: {exc}") from exc


def _verify_stream(r: _Reader, path: str, size: int, trust: TrustPolicy | None) -> BundleIndex:
    magic, version = _HEADER.unpack(r.exact(_HEADER.size, "the header"))
    if magic != BUNDLE_MAGIC:
        raise _refuse("not an artcache bundle (bad magic)")
    if version != BUNDLE_VERSION:
        raise IncompatibleEntryError(f"bundle format version {version}; this artcache reads {BUNDLE_VERSION}")
    blobs: dict[str, tuple[int, int]] = {}
    manifests: dict[str, bytes] = {}
    records = 0
    while True:
        kind = r.exact(1, "a record header", hashed=False)
        if kind == KIND_TRAILER:
            break
        rest = r.exact(_RECORD.size - 1, "a record header", hashed=False)
        r.hasher.update(kind + rest)
        _kind, raw_key, length, want = _RECORD.unpack(kind + rest)
        key = raw_key.hex()
        records += 1
        if kind == KIND_BLOB:
            if length > _MAX_BLOB_BYTES:
                raise _refuse(f"blob record {records} claims {length} bytes")
            if key in blobs:
                raise _refuse(f"blob {key[:16]} appears twice")
            offset = r.offset
            got, _ = r.payload(length, keep=False)
            if got != want or got.hex() != key:
                raise _refuse(f"blob {key[:16]} (record {records}) does not match its sha256")
            blobs[key] = (offset, length)
        elif kind == KIND_MANIFEST:
            if length > MAX_MANIFEST_BYTES:
                raise _refuse(f"manifest record {records} claims {length} bytes")
            if key in manifests:
                raise _refuse(f"entry {key[:16]} appears twice")
            got, envelope = r.payload(length, keep=True)
            if got != want:
                raise _refuse(f"manifest {key[:16]} (record {records}) does not match its sha256")
            _check_manifest(key, envelope, blobs, trust)
            manifests[key] = envelope
        else:
            raise _refuse(f"unknown record kind {kind!r} at byte {r.offset - _RECORD.size}")
    count, digest = struct.unpack("<Q32s", r.exact(_TRAILER.size - 1, "the trailer", hashed=False))
    if count != records or digest != r.hasher.digest():
        raise _refuse("trailer does not match the records (reordered, spliced or forged)")
    if r.f.read(1):
        raise _refuse("data after the trailer")
    return BundleIndex(path, blobs, manifests, records, size)


def _check_manifest(key: str, envelope: bytes, blobs: dict[str, tuple[int, int]], trust: TrustPolicy | None) -> None:
    if not is_digest(key):  # 32 raw bytes always hex to a digest; kept as a cheap invariant
        raise _refuse(f"bad entry key {key!r}")
    parsed = decode_envelope(envelope)  # sizes first: the record's length is capped already
    if trust is not None:
        trust.check(parsed)  # over the raw bytes, before anything is parsed, as on lookup
    manifest = decode_core(parsed.core)  # the summary is for the tools, which check it when they read it
    if manifest.key != key:
        raise _refuse(f"record {key[:16]} holds the manifest of {manifest.key[:16]}")
    for ref in manifest.blobs:
        if blobs.get(ref.digest, (0, -1))[1] != ref.size:
            raise _refuse(f"entry {key[:16]} names blob {ref.digest[:16]} that does not precede it")


# -- import (pass 2) ---------------------------------------------------------------------
def import_bundle(
    store: Store,
    path: str | os.PathLike[str],
    *,
    trust: TrustPolicy | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Verify ``path`` completely, then copy its blobs and then its manifests into ``store``."""
    index = verify_bundle(path, trust=trust, progress=progress)
    progress = progress or _no_progress
    todo = {d: loc for d, loc in index.blobs.items() if not store.has(cas_key(d))}
    written = 0
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ArtcacheError(f"cannot read bundle {path}: {exc}") from exc
    with f, progress("import", sum(n for _, n in todo.values())) as advance:
        for digest, (offset, length) in todo.items():
            try:
                f.seek(offset)
                # One blob in memory at a time: Store.put takes bytes.
                data = f.read(length)
            except OSError as exc:
                raise ArtcacheError(f"cannot read bundle {path}: {exc}") from exc
            if len(data) != length or hashlib.sha256(data).hexdigest() != digest:
                # Only blobs (never manifests) can have been written so far: orphans, no entry.
                raise _refuse(f"blob {digest[:16]} changed after verification")
            store.put(cas_key(digest), data)
            written += length
            advance(length)
    for key, envelope in index.manifests.items():  # the commit points, last
        store.put(ac_key(key), envelope)
        written += len(envelope)
    return ImportResult(str(path), len(index.manifests), len(todo), len(index.blobs) - len(todo), written)


__all__ = [
    "BUNDLE_MAGIC",
    "BUNDLE_VERSION",
    "BundleIndex",
    "ExportResult",
    "ImportResult",
    "Progress",
    "Skipped",
    "export_bundle",
    "import_bundle",
    "verify_bundle",
]
