"""zstd-compressed blobs: where it pays, deterministic, bounded on load, and a reader
without zstandard misses cleanly on a compressed entry."""

from __future__ import annotations

import dataclasses
import json
import random
import tracemalloc
from pathlib import Path

import pytest

from artcache import Cache, NewBlob
from artcache.blob_codec import MIN_SIZE, RAW, ZSTD, decode, encode
from artcache.archive import export_bundle, import_bundle
from artcache.config import Settings, settings_from_env
from artcache.digest import content_digest
from artcache.entry import BlobRef, decode_envelope, decode_manifest, encode_manifest
from artcache.errors import CorruptEntryError, IncompatibleEntryError
from artcache.store import LocalStore, MemoryStore, ac_key, cas_key

from .conftest import run_python

zstandard = pytest.importorskip("zstandard", reason="zstandard is not installed (pip install 'artcache[compress]')")

KEY = "5a" * 32
SETTINGS = Settings(store_urls=("memory://",))
# Like generated wrapper source: a small vocabulary, repeated with variation.
SOURCE = "\n".join(f"    buf{i % 97} = kernel_{i % 13}(arg{i % 7}, stride={i % 5})" for i in range(20_000)).encode()
WEIGHTS = random.Random(0).randbytes(50_000)  # like float weights: incompressible


def _save(cache: Cache, key: str = KEY) -> None:
    blobs = [NewBlob("code", SOURCE, "wrapper.py"), NewBlob("constant", WEIGHTS, "w"), NewBlob("object", b"tiny")]
    assert cache.save(key, blobs, factors={"graph": "g" * 64}, environment={"torch": "test"}) is not None


def _stored_sizes(store: MemoryStore) -> int:
    return sum(info.size for info in store.iterate("cas/"))


# -- the codec ---------------------------------------------------------------------------
def test_compresses_only_where_it_pays_and_deterministically() -> None:
    encoding, frame = encode(SOURCE)
    assert encoding == ZSTD and len(frame) * 5 < len(SOURCE)
    assert encode(SOURCE) == (ZSTD, frame)  # identical inputs, identical bytes: dedupe holds
    assert encode(WEIGHTS) == (RAW, WEIGHTS)  # would not save a fifth
    assert encode(b"x" * (MIN_SIZE - 1)) == (RAW, b"x" * (MIN_SIZE - 1))
    assert encode(SOURCE, compress=False) == (RAW, SOURCE)
    ref = BlobRef("code", content_digest(frame), len(frame), "", ZSTD, len(SOURCE))
    assert decode(ref, frame) == SOURCE


def _zstd_ref(frame: bytes, raw_size: int) -> BlobRef:
    return BlobRef("code", content_digest(frame), len(frame), "", ZSTD, raw_size)


def test_output_is_bounded_by_the_manifest_not_the_frame_header() -> None:
    big = b"\0" * (32 << 20)
    frame = encode(big)[1]  # its header says 32 MiB
    assert zstandard.frame_content_size(frame) == len(big) and len(frame) < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(CorruptEntryError, match="more than the 100 bytes"):
            decode(_zstd_ref(frame, 100), frame)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding held {peak} bytes for a 100-byte blob"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "two-frames", "short"])
def test_bad_frames_are_corrupt_entries(damage: str) -> None:
    frame = encode(SOURCE)[1]
    stored, raw_size = {
        "truncated": (frame[:-7], len(SOURCE)),
        "garbage": (b"\x28\xb5\x2f\xfd" + b"nonsense" * 20, len(SOURCE)),
        "two-frames": (frame + frame, len(SOURCE)),
        "short": (frame, len(SOURCE) + 1),
    }[damage]
    with pytest.raises(CorruptEntryError):
        decode(_zstd_ref(stored, raw_size), stored)


def test_unknown_encoding_is_incompatible() -> None:
    ref = BlobRef("code", "ab" * 32, 3, "", "brotli", 10)
    with pytest.raises(IncompatibleEntryError, match="brotli"):
        decode(ref, b"abc")


# -- entries -----------------------------------------------------------------------------
def test_entry_round_trips_compressed_and_shrinks() -> None:
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS, strict=True)
    _save(cache)
    raw = store.get(ac_key(KEY))
    assert raw is not None and decode_envelope(raw).version == 2
    refs = {ref.role: ref for ref in decode_manifest(raw).blobs}
    assert (refs["code"].encoding, refs["code"].raw_size) == (ZSTD, len(SOURCE))
    assert refs["code"].size < len(SOURCE) // 5 and store.get(cas_key(refs["code"].digest)) is not None
    assert (refs["constant"].encoding, refs["constant"].raw_size, refs["constant"].size) == (RAW, None, len(WEIGHTS))
    assert _stored_sizes(store) < len(SOURCE) // 5 + len(WEIGHTS) + 100
    entry = cache.lookup(KEY)
    assert entry is not None
    assert (entry.blob("code"), entry.blob("constant"), entry.blob("object")) == (SOURCE, WEIGHTS, b"tiny")
    _save(cache, "6b" * 32)  # the same blobs under another key: stored once
    assert len(list(store.iterate("cas/"))) == 3


def test_compression_can_be_turned_off() -> None:
    store = MemoryStore()
    settings = settings_from_env({"ARTCACHE_STORE": "memory://", "ARTCACHE_COMPRESS": "0"})
    assert settings.compress is False and settings_from_env({}).compress is True
    _save(Cache(store, settings=settings, strict=True))
    assert all(ref.encoding == RAW for ref in decode_manifest(store.get(ac_key(KEY)) or b"").blobs)
    assert _stored_sizes(store) == len(SOURCE) + len(WEIGHTS) + len(b"tiny")
    assert Cache(store, settings=SETTINGS, strict=True).lookup(KEY) is not None


def test_a_frame_that_lies_under_a_valid_address_is_a_corrupt_miss() -> None:
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS, strict=False)
    _save(cache)
    manifest = decode_manifest(store.get(ac_key(KEY)) or b"")
    code = manifest.blob("code")
    lie = encode(SOURCE[:-1] + b"!")[1]  # a valid frame of other bytes, stored under its own address
    store.put(cas_key(content_digest(lie)), lie)
    blobs = tuple(dataclasses.replace(b, digest=content_digest(lie), size=len(lie), raw_size=len(SOURCE) + 5)
                  if b.role == "code" else b for b in manifest.blobs)
    store.put(ac_key(KEY), encode_manifest(dataclasses.replace(manifest, blobs=blobs)))
    assert cache.lookup(KEY) is None and cache.stats().misses == {"corrupt": 1}
    assert code.raw_size == len(SOURCE)


# -- without zstandard: a clean miss --------------------------------------------------------
_WITHOUT_ZSTD = """
import json, sys
sys.modules["zstandard"] = None  # as if the package were not installed
import artcache
from artcache.entry import decode_manifest
from artcache.store import ac_key
cache = artcache.Cache({url!r})
missed = cache.lookup({key!r})
cache.save({other!r}, [artcache.NewBlob("code", {source!r})], factors={{}}, environment={{}})
written = [ref.encoding for ref in decode_manifest(cache.store.get(ac_key({other!r}))).blobs]
s = cache.stats()
print(json.dumps({{"missed": missed is None, "misses": s.misses, "errors": s.errors, "written": written}}))
"""


def test_without_zstandard_a_compressed_entry_is_a_clean_miss(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    _save(Cache(url, settings=Settings(store_urls=(url,)), strict=True))
    other = "7c" * 32
    proc = run_python(_WITHOUT_ZSTD.format(url=url, key=KEY, other=other, source=SOURCE[:5000]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["missed"] and result["misses"] == {"incompatible": 1}
    assert result["written"] == [RAW]  # it still writes, uncompressed
    assert "pip install 'artcache[compress]'" in proc.stderr  # the warning says what is missing
    # What it wrote reads everywhere, with or without zstandard.
    assert Cache(url, settings=Settings(store_urls=(url,)), strict=True).lookup(other) is not None


# -- bundles carry the stored bytes: compressed entries make smaller bundles ---------------
def test_bundles_carry_compressed_blobs_as_stored(tmp_path: Path) -> None:
    sizes = {}
    for compress in (False, True):
        store = LocalStore(tmp_path / f"src-{compress}", durable=False)
        settings = Settings(store_urls=("memory://",), compress=compress)
        _save(Cache(store, settings=settings, strict=True))
        bundle = tmp_path / f"b-{compress}.acb"
        export_bundle(store, bundle)
        sizes[compress] = bundle.stat().st_size
        target = LocalStore(tmp_path / f"dst-{compress}", durable=False)
        import_bundle(target, bundle)
        entry = Cache(target, settings=SETTINGS, strict=True).lookup(KEY)
        assert entry is not None and entry.blob("code") == SOURCE
    assert sizes[True] < sizes[False] - len(SOURCE) * 0.8


def test_float_weights_are_stored_as_they_are() -> None:
    """A freshly initialized Linear layer's float32 weights save about a tenth under zstd
    (their exponent bytes repeat): not worth decompressing at every hit, so stored raw."""
    import torch

    torch.manual_seed(0)
    weights = torch.nn.Linear(1024, 256).weight.detach().numpy().tobytes()  # saves 10.3%
    assert encode(weights) == (RAW, weights)
