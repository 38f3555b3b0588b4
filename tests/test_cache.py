"""The Cache facade: entries round-trip, and every failure is a clean miss (or raises
under strict mode)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgpack
import pytest

from artcache import Cache, CorruptEntryError, NewBlob, StoreError
from artcache.config import Settings
from artcache.entry import MAGIC, decode_envelope, decode_manifest, encode_envelope
from artcache.store import LocalStore, MemoryStore, ac_key, cas_key

from .conftest import run_python

KEY = "12" * 32
OTHER = "34" * 32
SETTINGS = Settings(store_urls=("memory://",))


def save_demo(cache: Cache, key: str = KEY, payload: bytes = b"weights" * 1000) -> None:
    manifest = cache.save(
        key,
        [NewBlob("code", b"def f(x): return x"), NewBlob("constant", payload, "w")],
        factors={"graph": "g" * 64},
        environment={"torch": "test"},
        summary={"title": "demo"},
    )
    assert manifest is not None


def test_entry_reloads_in_a_fresh_process(store_url: str) -> None:
    save_demo(Cache(store_url, settings=SETTINGS, strict=True))
    proc = run_python(
        "import artcache\n"
        f"e = artcache.Cache({store_url!r}, strict=True).lookup({KEY!r})\n"
        "print(e.blob('code').decode(), len(e.blob('constant')), e.manifest.producer.split()[0])\n"
        # A lookup parses only what loading needs; the summary is for the tools.
        f"print(artcache.entry.decode_manifest(artcache.Cache({store_url!r}).store.get('ac/{KEY}')).summary['title'])\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["def", "f(x):", "return", "x", "7000", "artcache", "demo"]


def test_identical_blobs_are_stored_once(store_dir: Path) -> None:
    cache = Cache(LocalStore(store_dir), settings=SETTINGS, strict=True)
    save_demo(cache, KEY)
    save_demo(cache, OTHER)
    assert len(list(cache.store.iterate("cas/"))) == 2
    assert len(list(cache.store.iterate("ac/"))) == 2


class RecordingStore(MemoryStore):
    """A real memory store that also remembers the order of writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        super().put(key, data)


def test_manifest_is_written_last() -> None:
    store = RecordingStore()
    save_demo(Cache(store, settings=SETTINGS, strict=True))
    assert store.writes[-1] == ac_key(KEY)
    assert all(k.startswith("cas/") for k in store.writes[:-1]) and len(store.writes) == 3


def test_absent_is_a_miss() -> None:
    cache = Cache(MemoryStore(), settings=SETTINGS, strict=True)
    assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"absent": 1}


def test_missing_blob_is_a_miss_even_when_strict() -> None:
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS, strict=True)
    save_demo(cache)
    manifest = decode_manifest(store.get(ac_key(KEY)) or b"")
    store.delete(cas_key(manifest.blob("constant").digest))
    assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"missing-blob": 1}


def _corrupt_manifest(store: MemoryStore) -> None:
    store.put(ac_key(KEY), encode_envelope(b"\xc1garbage", b""))


def test_corrupt_manifest_is_a_miss_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    _corrupt_manifest(store)
    cache = Cache(store, settings=SETTINGS, strict=False)
    with caplog.at_level(logging.WARNING, logger="artcache"):
        assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"corrupt": 1}
    assert "continuing without the cache" in caplog.text


def test_corrupt_manifest_raises_when_strict() -> None:
    store = MemoryStore()
    _corrupt_manifest(store)
    with pytest.raises(CorruptEntryError):
        Cache(store, settings=SETTINGS, strict=True).lookup(KEY)


def test_future_format_version_is_incompatible_miss() -> None:
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS)
    save_demo(cache)
    raw = bytearray(store.get(ac_key(KEY)) or b"")
    raw[8:12] = (99).to_bytes(4, "little")  # the version field of the envelope
    store.put(ac_key(KEY), bytes(raw))
    assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"incompatible": 1}


def test_format_1_entry_is_an_incompatible_miss(caplog: pytest.LogCaptureFixture) -> None:
    """An entry written by a format-1 artcache (a msgpack array envelope around a msgpack
    body) is a clean miss with one warning, under its key, without parsing its body."""
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS)
    save_demo(cache)
    core = msgpack.unpackb(decode_envelope(store.get(ac_key(KEY)) or b"").core, raw=False)
    body = msgpack.packb({**core, "summary": {}}, use_bin_type=True)
    store.put(ac_key(KEY), msgpack.packb([MAGIC, 1, body, None, None], use_bin_type=True))
    with caplog.at_level(logging.WARNING, logger="artcache"):
        assert cache.lookup(KEY) is None and cache.lookup(KEY) is None
    assert cache.stats().misses == {"incompatible": 2}
    assert caplog.text.count("format version 1") == 1


def test_blob_size_lie_is_corrupt() -> None:
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS)
    save_demo(cache)
    digest = decode_manifest(store.get(ac_key(KEY)) or b"").blob("code").digest
    store.put(cas_key(digest), b"short")
    assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"corrupt": 1}


def test_manifest_under_wrong_key_is_corrupt() -> None:
    store = MemoryStore()
    cache = Cache(store, settings=SETTINGS)
    save_demo(cache)
    store.put(ac_key(OTHER), store.get(ac_key(KEY)) or b"")
    assert cache.lookup(OTHER) is None
    assert cache.stats().misses == {"corrupt": 1}


def test_write_failure_degrades_or_raises(store_dir: Path) -> None:
    read_only = LocalStore(store_dir, read_only=True)
    assert Cache(read_only, settings=SETTINGS).save(KEY, [NewBlob("code", b"x")], factors={}, environment={}) is None
    with pytest.raises(StoreError):
        Cache(read_only, settings=SETTINGS, strict=True).save(KEY, [NewBlob("code", b"x")], factors={}, environment={})


def test_bitflipped_blob_on_disk_is_a_miss_and_quarantined(store_dir: Path) -> None:
    cache = Cache(LocalStore(store_dir), settings=SETTINGS, strict=True)
    save_demo(cache)
    blob = max((p for p in (store_dir / "cas").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # inside the payload, stored compressed or not
    blob.write_bytes(bytes(raw))
    assert cache.lookup(KEY) is None
    assert cache.stats().misses == {"missing-blob": 1}
    assert len(os.listdir(store_dir / "quarantine")) == 1
    save_demo(cache)  # the entry is rebuilt
    assert cache.lookup(KEY) is not None


def test_unopenable_store_compiles_without_the_cache(tmp_path: Path) -> None:
    """backend="artcache" with a store that cannot be created: the compile still works."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = (
        "import torch\n"
        "f = torch.compile(lambda x: x.sin() * 2, backend='artcache')\n"
        "x = torch.randn(5)\n"
        "assert torch.allclose(f(x), x.sin() * 2)\n"
        "print('ok')\n"
    )
    env = {"ARTCACHE_STORE": f"file://{blocker}/store", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    proc = run_python(code, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert "cannot open the store" in proc.stderr
    strict = run_python(code, env={**env, "ARTCACHE_STRICT": "1"})
    assert strict.returncode != 0 and "StoreError" in strict.stderr
