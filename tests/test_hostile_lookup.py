"""Hostile entries on the load path: a lookup of any crafted entry is a miss with a reason,
costs at most 1 s and at most 2x the manifest cap in memory, and never raises out of
``Cache.lookup`` (only ``ARTCACHE_STRICT=1`` raises).

Each case is what a writer of a shared store (directory or Redis) can plant without the
signing key: a sparse manifest file of huge apparent size, msgpack bombs (a few bytes
declaring a huge array, map or string, deep nesting), a manifest naming a million blobs,
and blobs whose stored size differs from what the manifest declares.  Every case is
looked up twice: by a reader without trusted keys (the bytes are parsed, within limits)
and by one with them (refused before anything is parsed; blob cases carry a valid
signature, as when only a blob was swapped).
"""

from __future__ import annotations

import base64
import logging
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from artcache import Cache
from artcache.config import Settings
from artcache.digest import content_digest
from artcache.entry import MAX_BLOBS, MAX_CORE_BYTES, MAX_MANIFEST_BYTES, BlobRef, Manifest, encode_envelope, encode_parts
from artcache.errors import CorruptEntryError
from artcache.signing import Signer, sign_envelope
from artcache.store import LocalStore, MemoryStore, Store, TieredStore, ac_key, cas_key

KEY = "ab" * 32
SIGNER = Signer(b"\x07" * 32)
TRUSTED = Settings(store_urls=("memory://",), trusted_keys=(base64.b64encode(SIGNER.public_key).decode(),))
PLAIN = Settings(store_urls=("memory://",))
# Whether stores refuse an oversized value before reading it (Store.get_bounded); until
# they do, a value of huge apparent size is read whole before its size is checked.
BOUNDED_READS = hasattr(Store, "get_bounded")
_TRAILER = struct.Struct("<16sQ4s")


def core(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"key": KEY, "created": 0.0, "producer": "hostile", "compile_seconds": 0.0,
                           "factors": {}, "environment": {}, "blobs": []}
    doc.update(over)
    return doc


def packed(doc: dict[str, Any], **raw_fields: bytes) -> bytes:
    """The core ``doc`` with some fields replaced by raw msgpack bytes (bombs)."""
    out = msgpack.packb({k: v for k, v in doc.items() if k not in raw_fields}, use_bin_type=True)
    header, count = out[0], len(doc) - len(raw_fields)
    assert 0x80 <= header <= 0x8F and header & 0x0F == count
    body = out[1:] + b"".join(msgpack.packb(k) + v for k, v in raw_fields.items())
    return bytes([0x80 | len(doc)]) + body


def manifest_with(blobs: list[tuple[bytes, int]]) -> tuple[bytes, bytes]:
    refs = tuple(BlobRef("data", content_digest(data), size, content_digest(data)) for data, size in blobs)
    return encode_parts(Manifest(KEY, {}, {}, 0.0, "hostile", refs))


def sparse_file(path: Path, size: int, *, valid_trailer: bool) -> None:
    """A local-store file of apparent ``size`` bytes that takes a few KiB on disk: zeros,
    then a trailer whose length field matches (and, if ``valid_trailer``, its checksum:
    an attacker hashes the zeros once)."""
    from artcache.digest import checksum_hasher

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = size - _TRAILER.size
    digest = b"\0" * 16
    if valid_trailer:
        hasher, chunk = checksum_hasher(), bytes(1 << 24)
        for _ in range(payload // len(chunk)):
            hasher.update(chunk)
        hasher.update(bytes(payload % len(chunk)))
        digest = hasher.digest()
    with open(path, "wb") as f:
        f.truncate(payload)
        f.seek(payload)
        f.write(_TRAILER.pack(digest, payload, b"ACF1"))


def _local_path(root: Path, key: str) -> Path:
    space, name = key.split("/")
    return root / space / name[:2] / name


# -- the cases: each builds a fresh store holding one hostile entry under KEY -------------------
Case = Callable[[Path], Store]


def _memory(manifest: bytes, blobs: dict[str, bytes] | None = None) -> Store:
    store = MemoryStore()
    for key, data in (blobs or {}).items():
        store.put(key, data)
    store.put(ac_key(KEY), manifest)
    return store


def sparse_manifest(size: int, valid: bool) -> Case:
    def build(tmp: Path) -> Store:
        store = LocalStore(tmp / "store")
        sparse_file(_local_path(store.root, ac_key(KEY)), size, valid_trailer=valid)
        return store

    return build


def bomb(**raw: bytes) -> Case:
    return lambda tmp: _memory(encode_envelope(packed(core(), **raw), b"\x80"))


def many_blobs(tmp: Path) -> Store:
    """As many distinct, absent blobs as a core may name: each costs a store read."""
    n = min(MAX_BLOBS, MAX_CORE_BYTES // 80)
    refs = [["", f"{i:064x}", 0, ""] for i in range(n)]
    data = packed(core(), blobs=b"\xdc" + n.to_bytes(2, "big") + b"".join(msgpack.packb(r) for r in refs))
    tiers = TieredStore([LocalStore(tmp / "local"), MemoryStore()])
    tiers.tiers[1].put(ac_key(KEY), encode_envelope(data, b"\x80"))
    return tiers


def summary_bomb(*, forged: bool) -> Case:
    """A summary of 16M empty arrays (a gigabyte of Python lists if parsed), beside a core
    naming one absent blob: a lookup never parses the summary.  ``forged``: with a signature
    that claims the trusted key, so a trusting reader hashes all of it before refusing."""

    def build(tmp: Path) -> Store:
        n = MAX_MANIFEST_BYTES - (1 << 16)
        doc = core(blobs=[["object", "cd" * 32, 10, ""]])
        summary = b"\xdd" + (n - 5).to_bytes(4, "big") + b"\x90" * (n - 5)
        signature = (b"\0" * 64, SIGNER.key_id) if forged else (None, None)
        return _memory(encode_envelope(packed(doc), summary, *signature))

    return build


def blob_size_lie(size: int, valid: bool) -> Case:
    """A correctly signed manifest declares a 100-byte blob; the file under its address is
    a sparse file of ``size`` bytes (swapping a blob needs no key)."""

    def build(tmp: Path) -> Store:
        store = LocalStore(tmp / "store")
        good = b"x" * 100
        store.put(ac_key(KEY), sign_envelope(*manifest_with([(good, 100)]), SIGNER))
        sparse_file(_local_path(store.root, cas_key(content_digest(good))), size, valid_trailer=valid)
        return store

    return build


def declared_huge(tmp: Path) -> Store:
    small = b"small"
    return _memory(sign_envelope(*manifest_with([(small, 1 << 40)]), SIGNER), {cas_key(content_digest(small)): small})


needs_bounded_reads = pytest.mark.xfail(
    not BOUNDED_READS, strict=True, reason="the store reads a value whole before its size can be checked",
)
CASES = {
    # Apparent size beyond any machine's memory: the read itself fails (MemoryError).
    "sparse-manifest-1TiB": sparse_manifest(1 << 40, valid=False),
    # Apparent size a machine can allocate, with a valid checksum: read whole unless bounded.
    "sparse-manifest-256MiB": pytest.param(sparse_manifest(256 << 20, valid=True), marks=needs_bounded_reads),
    "array-of-2**32-items": bomb(blobs=b"\xdd\xff\xff\xff\xff"),
    "map-of-2**32-items": bomb(factors=b"\xdf\xff\xff\xff\xff"),
    "str-of-4GiB": bomb(producer=b"\xdb\xff\xff\xff\xff"),
    "deep-nesting": bomb(blobs=b"\x91" * 100_000 + b"\x01"),
    "a-million-blobs": bomb(blobs=b"\xdd" + (10**6).to_bytes(4, "big") + b"\x94\xa0\xd9\x40" + b"0" * 64 + b"\x00\xa0"),
    "blobs-up-to-the-core-cap": many_blobs,
    "summary-bomb": summary_bomb(forged=False),
    "summary-bomb-forged-signature": summary_bomb(forged=True),
    "blob-size-lie-1TiB": blob_size_lie(1 << 40, valid=False),
    "blob-size-lie-256MiB": pytest.param(blob_size_lie(256 << 20, valid=True), marks=needs_bounded_reads),
    "blob-declared-1TiB": declared_huge,
}


def _measure(build: Case, tmp: Path, settings: Settings) -> tuple[float, int, Cache]:
    """Seconds for one lookup (untraced) and its traced peak (another fresh store)."""
    cache = Cache(build(tmp / "timed"), settings=settings)
    start = time.perf_counter()
    assert cache.lookup(KEY) is None
    seconds = time.perf_counter() - start
    traced = Cache(build(tmp / "traced"), settings=settings)
    tracemalloc.start()
    try:
        assert traced.lookup(KEY) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak, cache


@pytest.mark.parametrize("trusted", [False, True], ids=["no-trust", "trusted-keys"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_hostile_lookup_is_a_bounded_miss(tmp_path: Path, case: Case, trusted: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="artcache"):
        seconds, peak, cache = _measure(case, tmp_path, TRUSTED if trusted else PLAIN)
    stats = cache.stats()
    assert stats.hits == 0 and sum(stats.misses.values()) == 1, stats
    reason = next(iter(stats.misses))
    assert reason in {"corrupt", "untrusted", "missing-blob", "lookup-error"}, stats.misses
    assert seconds <= 1.0, f"lookup took {seconds:.2f} s"
    assert peak <= 2 * MAX_MANIFEST_BYTES, f"lookup peaked at {peak / 2**20:.1f} MiB"
    assert reason == "missing-blob" or "continuing without the cache" in caplog.text


def test_lookup_boundary_turns_a_memory_error_from_stored_bytes_into_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sparse manifest file whose trailer claims 1 TiB: the store allocates that much
    before any check can run, and the MemoryError used to escape Cache.lookup (and fail the
    user's torch.compile).  Now it is a miss with one warning; strict mode raises it as a
    CorruptEntryError."""
    build = sparse_manifest(1 << 40, valid=False)
    cache = Cache(build(tmp_path / "a"), settings=PLAIN)
    with caplog.at_level(logging.WARNING, logger="artcache"):
        assert cache.lookup(KEY) is None and cache.lookup(KEY) is None
    assert sum(cache.stats().misses.values()) == 2
    assert caplog.text.count("continuing without the cache") == 1
    with pytest.raises(CorruptEntryError):
        Cache(build(tmp_path / "b"), settings=PLAIN, strict=True).lookup(KEY)


class _Raising(MemoryStore):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def get(self, key: str) -> bytes | None:
        raise self.error


@pytest.mark.parametrize("error", [RecursionError("deep"), RuntimeError("torch internal"), KeyError("x")])
def test_lookup_boundary_catches_any_exception(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    """No stored bytes make the lookup itself raise these (the core reader does not recurse;
    msgpack's depth limit raises ValueError), so a store is made to raise them."""
    cache = Cache(_Raising(error), settings=PLAIN)
    with caplog.at_level(logging.WARNING, logger="artcache"):
        assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"lookup-error": 1}
    assert cache.stats().errors == {f"lookup:{type(error).__name__}": 1}
    assert type(error).__name__ in caplog.text
    with pytest.raises(CorruptEntryError) as raised:
        Cache(_Raising(error), settings=PLAIN, strict=True).lookup(KEY)
    assert raised.value.__cause__ is error


def test_the_cases_are_what_they_claim(tmp_path: Path) -> None:
    """The sparse files take little disk and read back at their apparent size, and the
    bombs are small: what the bounds above are measured against."""
    store = CASES["sparse-manifest-1TiB"](tmp_path / "a")
    path = _local_path(store.local_root or tmp_path, ac_key(KEY))
    st = path.stat()
    assert st.st_size == 1 << 40 and st.st_blocks * 512 < 1 << 20
    assert len(CASES["a-million-blobs"](tmp_path).get(ac_key(KEY)) or b"") < 1024
