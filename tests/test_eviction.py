"""Automatic eviction of a capped local store: whole entries, incremental bookkeeping.

Entries here are saved through ``EntryStore`` (manifest + blobs, the real commit order);
``catalog.verify`` is what ``artcache verify`` runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from artcache.testing import payload_for

from artcache import catalog
from artcache.config import Settings
from artcache.entries import EntryStore
from artcache.entry import NewBlob
from artcache.store import LocalStore
from artcache.store.base import ac_key, cas_key


def entry_store(store: LocalStore) -> EntryStore:
    return EntryStore(store, settings=Settings(store_urls=(store.url,), compress=False), strict=True)


def save(entries: EntryStore, name: str, blobs: list[bytes]) -> str:
    key = payload_key(name)
    manifest = entries.save(key, [NewBlob("source", b, f"b{i}") for i, b in enumerate(blobs)],
                            factors={"graph": name}, environment={})
    assert manifest is not None
    return key


def payload_key(name: str) -> str:
    from artcache.digest import content_digest

    return content_digest(f"entry:{name}".encode())


def blob_path(store: LocalStore, data: bytes) -> Path:
    from artcache.digest import content_digest

    return store._path(cas_key(content_digest(data)))


def backdate(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t), follow_symlinks=False)


def assert_whole_entries(store: LocalStore) -> None:
    report = catalog.verify(store)
    assert report.problems == (), report.problems


def test_eviction_never_leaves_an_entry_with_missing_blobs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=60_000, durable=False)
    entries = entry_store(store)
    shared = payload_for("shared", 2000)
    saved = []
    for i in range(40):
        saved.append(save(entries, f"e{i}", [shared, payload_for(f"u{i}", 3000), payload_for(f"v{i}", 2500)]))
        assert_whole_entries(store)
        assert store.disk_usage() <= 60_000
    present = [k for k in saved if store.has(ac_key(k))]
    assert 0 < len(present) < len(saved)
    assert present == saved[-len(present):]  # least recently used entries went first
    for key in present:
        assert entries.lookup(key) is not None


def test_blob_kept_while_any_entry_refers_to_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=60_000, durable=False)
    entries = entry_store(store)
    shared = payload_for("shared", 4000)
    first = save(entries, "first", [shared, payload_for("f", 3000)])
    # The shared blob looks old (its last use long ago), the newest entry still needs it.
    for i in range(6):
        save(entries, f"fill{i}", [payload_for(f"fill{i}", 5000)])
    last = save(entries, "last", [shared, payload_for("l", 3000)])
    backdate(blob_path(store, shared), 7200)
    for i in range(12):
        save(entries, f"more{i}", [payload_for(f"more{i}", 3000)])
        assert_whole_entries(store)
    assert not store.has(ac_key(first))
    assert store.has(ac_key(last)) and blob_path(store, shared).exists()
    assert entries.lookup(last) is not None


class ScanCountingStore(LocalStore):
    """A local store that counts full scans of its keyspaces."""

    scans = 0

    def _scan_space(self, space):  # type: ignore[no-untyped-def]
        type(self).scans += 1
        return super()._scan_space(space)


def test_capped_saves_do_not_rescan_the_store(tmp_path: Path) -> None:
    store = ScanCountingStore(tmp_path, max_size=200_000, durable=False)
    entries = entry_store(store)
    save(entries, "warmup", [payload_for("warmup", 1000)])  # may build the index once
    ScanCountingStore.scans = 0
    for i in range(150):  # about 8 times the cap: many evictions
        save(entries, f"s{i}", [payload_for(f"s{i}a", 4000), payload_for(f"s{i}b", 6000)])
    assert ScanCountingStore.scans == 0
    assert store.disk_usage() <= 200_000
    assert_whole_entries(store)
