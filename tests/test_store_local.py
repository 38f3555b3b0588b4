"""LocalStore: conformance, on-disk layout, URLs, read-only, corruption, size cap + LRU."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from artcache.testing import StoreConformance, StoreFactory, blob, manifest_key, payload_for

from artcache.config import settings_from_env
from artcache.errors import StoreError
from artcache.store import LocalStore, MemoryStore, TieredStore, open_store
from artcache.store import _frame, _fs
from artcache.store.local import STALE_TMP_S


def on_disk(store: LocalStore, key: str) -> Path:
    space, name = key.split("/")
    return store.root / space / name[:2] / name


def quarantined_files(store: LocalStore) -> list[Path]:
    return sorted((store.root / "quarantine").iterdir())


def backdate(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


# -- conformance -------------------------------------------------------------------
class TestLocalConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))
        return lambda: LocalStore(tmp_path / f"store{next(counter)}")


class TestLocalNoFsyncConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))
        return lambda: open_store(f"file://{tmp_path}/store{next(counter)}?fsync=0")


class TestLocalCappedConformance(StoreConformance):
    """A cap far above what the suite writes must change nothing."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))
        return lambda: LocalStore(tmp_path / f"store{next(counter)}", max_size=64 << 20)


# -- URLs and layout ---------------------------------------------------------------
def test_open_store_urls(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}/a")
    assert isinstance(s, LocalStore) and s.durable and not s.read_only
    assert s.root == (tmp_path / "a").resolve()
    fast = open_store(f"file://{tmp_path}/b?fsync=0")
    assert isinstance(fast, LocalStore) and fast.durable is False
    assert isinstance(open_store("memory://"), MemoryStore)
    tiered = open_store(f"file://{tmp_path}/c,memory://remote")
    assert isinstance(tiered, TieredStore) and len(tiered.tiers) == 2
    for bad in ("ftp://x/y", "file://host/path", "", "file://"):
        with pytest.raises(StoreError):
            open_store(bad)


def test_sharded_layout_and_trailer(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key, data = blob(b"layout payload")
    store.put(key, data)
    path = on_disk(store, key)
    raw = path.read_bytes()
    assert path.parent.name == key[4:6]
    assert raw[: len(data)] == data
    assert len(raw) == len(data) + _fs.TRAILER_SIZE
    assert raw.endswith(_frame.TRAILER_MAGIC)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_reopen_sees_data(tmp_path: Path) -> None:
    key, data = blob(payload_for("persist", 5000))
    LocalStore(tmp_path).put(key, data)
    assert LocalStore(tmp_path).get(key) == data
    assert open_store(f"file://{tmp_path}?ro=1").get(key) == data


def test_unwritable_root_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StoreError):
        LocalStore(blocker / "store")


# -- read-only ---------------------------------------------------------------------
def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    key, data = blob(b"seeded")
    LocalStore(tmp_path).put(key, data)
    ro = open_store(f"file://{tmp_path}?ro=1")
    assert ro.read_only
    with pytest.raises(StoreError):
        ro.put(manifest_key("new"), b"x")
    with pytest.raises(StoreError):
        ro.delete(key)
    assert ro.get(key) == data
    assert ro.get(manifest_key("new")) is None


def test_read_only_store_on_missing_dir_is_empty(tmp_path: Path) -> None:
    ro = LocalStore(tmp_path / "nowhere", read_only=True)
    assert ro.get(manifest_key("x")) is None
    assert list(ro.iterate()) == []
    assert not (tmp_path / "nowhere").exists()


# -- corruption: truncated and bit-flipped files -------------------------------------
def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "flip_first_payload_byte": lambda p, n: _flip(p, 0),
    "flip_middle_payload_byte": lambda p, n: _flip(p, n // 2),
    "flip_last_payload_byte": lambda p, n: _flip(p, n - 1),
    "flip_checksum": lambda p, n: _flip(p, n),
    "flip_length": lambda p, n: _flip(p, n + 16),
    "flip_magic": lambda p, n: _flip(p, n + 24),
    "truncate_to_zero": lambda p, n: p.write_bytes(b""),
    "truncate_below_trailer": lambda p, n: p.write_bytes(p.read_bytes()[:10]),
    "truncate_half": lambda p, n: p.write_bytes(p.read_bytes()[: n // 2]),
    "drop_last_byte": lambda p, n: p.write_bytes(p.read_bytes()[:-1]),
    "drop_payload_byte": lambda p, n: p.write_bytes(p.read_bytes()[1:]),
    "append_garbage": lambda p, n: p.write_bytes(p.read_bytes() + b"junk"),
    "replace_payload_same_size": lambda p, n: p.write_bytes(b"\x00" * n + p.read_bytes()[n:]),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("keyspace", ["cas", "ac"])
def test_corrupt_file_is_a_miss_and_quarantined(tmp_path: Path, corruption: str, keyspace: str) -> None:
    store = LocalStore(tmp_path)
    data = payload_for(corruption, 4096)
    key = blob(data)[0] if keyspace == "cas" else manifest_key(corruption)
    store.put(key, data)
    path = on_disk(store, key)
    CORRUPTIONS[corruption](path, len(data))
    bad_bytes = path.read_bytes()

    assert store.get(key) is None
    assert not path.exists()
    assert store.quarantined == 1
    [moved] = quarantined_files(store)
    assert moved.name.startswith(key[-64:])
    assert moved.read_bytes() == bad_bytes
    assert store.has(key) is False
    assert key not in {i.key for i in store.iterate()}
    # The entry is rebuilt by writing it again (cas: the put is not skipped as "present").
    store.put(key, data)
    assert store.get(key) == data


def test_corrupt_file_in_read_only_store_is_a_miss_and_left_alone(tmp_path: Path) -> None:
    key, data = blob(payload_for("ro-corrupt", 1000))
    LocalStore(tmp_path).put(key, data)
    path = on_disk(LocalStore(tmp_path), key)
    _flip(path, 3)
    ro = LocalStore(tmp_path, read_only=True)
    assert ro.get(key) is None
    assert ro.get(key) is None  # still never served
    assert path.exists()
    assert ro.quarantined == 2


def test_quarantine_survives_a_deleted_quarantine_dir(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key, data = blob(b"will rot")
    store.put(key, data)
    (tmp_path / "quarantine").rmdir()
    _flip(on_disk(store, key), 0)
    assert store.get(key) is None
    assert not on_disk(store, key).exists()
    assert len(quarantined_files(store)) == 1


def test_quarantine_does_not_remove_a_file_replaced_meanwhile(tmp_path: Path) -> None:
    # A reader saw a bad file; before it quarantines, a writer renamed a good one over it.
    store = LocalStore(tmp_path)
    key = manifest_key("raced")
    store.put(key, b"bad soon")
    path = on_disk(store, key)
    stale_inode = path.stat().st_ino
    store.put(key, b"good replacement")
    assert path.stat().st_ino != stale_inode
    store._quarantine_key(key, stale_inode)
    assert store.get(key) == b"good replacement"
    assert quarantined_files(store) == []


# -- size cap and LRU eviction -----------------------------------------------------------
def test_cap_holds_after_every_put(tmp_path: Path) -> None:
    cap = 100_000
    store = LocalStore(tmp_path, max_size=cap)
    keys = []
    for i in range(60):
        key, data = blob(payload_for(f"cap{i}", 3000 + 37 * i))
        store.put(key, data)
        keys.append(key)
        assert store.disk_usage() <= cap
        assert store.get(key) == data  # a put's own key survives its eviction
    present = [k for k in keys if store.has(k)]
    assert 0 < len(present) < len(keys)
    # Pure write order: the newest keys are the survivors, in one contiguous suffix.
    assert present == keys[-len(present) :]


def test_lru_recently_read_keys_survive(tmp_path: Path) -> None:
    cap = 50_000
    store = LocalStore(tmp_path, max_size=cap)
    keys = []
    for i in range(8):
        key, data = blob(payload_for(f"lru{i}", 5000))
        store.put(key, data)
        keys.append(key)
    # Age them: key i was last used (100 - i) minutes ago, so key 0 is the oldest.
    for i, key in enumerate(keys):
        backdate(on_disk(store, key), (100 - i) * 60)
    # Read the two oldest: reads refresh the LRU clock of files older than a minute.
    assert store.get(keys[0]) is not None
    assert store.get(keys[1]) is not None
    for i in range(4):
        store.put(*blob(payload_for(f"lru-new{i}", 5000)))
    assert store.disk_usage() <= cap
    assert store.has(keys[0]) and store.has(keys[1])
    assert not store.has(keys[2])  # the least recently used went first
    survivors = [k for k in keys[2:] if store.has(k)]
    assert survivors == keys[len(keys) - len(survivors) :]


def test_peek_does_not_refresh_lru(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key, data = blob(b"inspected, not used")
    store.put(key, data)
    backdate(on_disk(store, key), 7200)
    before = on_disk(store, key).stat().st_mtime
    assert store.peek(key) == data
    assert on_disk(store, key).stat().st_mtime == before
    assert store.get(key) == data
    assert on_disk(store, key).stat().st_mtime > before + 7000


def test_cas_put_of_present_blob_refreshes_lru(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=30_000)
    old_key, old_data = blob(payload_for("refreshed", 5000))
    other_key, other_data = blob(payload_for("unrefreshed", 5000))
    store.put(old_key, old_data)
    store.put(other_key, other_data)
    backdate(on_disk(store, old_key), 7200)
    backdate(on_disk(store, other_key), 3600)
    store.put(old_key, old_data)  # already present: touched, not rewritten
    for i in range(4):  # the 4th put evicts exactly one file: the least recently used
        store.put(*blob(payload_for(f"filler{i}", 5000)))
    assert store.has(old_key)
    assert not store.has(other_key)


def test_eviction_removes_quarantine_and_stale_temp_files_first(tmp_path: Path) -> None:
    # Sizes chosen so that eviction must remove both the stale temp file and the
    # quarantined file, and that doing so is enough to keep the (older) key.
    store = LocalStore(tmp_path, max_size=32_000)
    keep_key, keep_data = blob(payload_for("keep", 10_000))
    store.put(keep_key, keep_data)
    # Named as the store names them (a dead writer's temp file, a quarantined file).
    stale = tmp_path / "tmp" / f"{'1' * 64}.4242.1.0.tmp"
    stale.write_bytes(b"x" * 10_000)
    backdate(stale, STALE_TMP_S + 60)
    live = tmp_path / "tmp" / f"{'2' * 64}.4243.1.0.tmp"
    live.write_bytes(b"y" * 1000)
    quarantined = tmp_path / "quarantine" / f"{'3' * 64}.1700000000000000000.4242.bad"
    quarantined.write_bytes(b"z" * 10_000)
    backdate(on_disk(store, keep_key), 7200)  # older than everything else, still kept
    store.put(*blob(payload_for("trigger", 9000)))
    # Files planted by hand are in no index, so they do not trigger an eviction; an
    # eviction counts them.
    store.evict(32_000)
    assert not stale.exists()
    assert not quarantined.exists()
    assert live.exists()  # an in-flight write of a live process is never touched
    assert store.get(keep_key) == keep_data
    assert store.disk_usage() <= 32_000


def test_blob_larger_than_cap_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=1000)
    with pytest.raises(StoreError):
        store.put(*blob(b"x" * 1000))
    assert list(store.iterate()) == []


def test_cap_from_environment(tmp_path: Path) -> None:
    settings = settings_from_env({"ARTCACHE_STORE": f"file://{tmp_path}", "ARTCACHE_MAX_SIZE": "64K"})
    store = open_store(settings.store_urls, max_size=settings.max_size)
    assert isinstance(store, LocalStore) and store.max_size == 64 * 1024
    for i in range(40):
        store.put(*blob(payload_for(f"env{i}", 4000)))
    assert store.disk_usage() <= 64 * 1024
    assert 0 < len(list(store.iterate())) < 40


def test_evict_reports_keys_even_when_root_is_named_like_a_keyspace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ac")
    keys = [store.put(*item) or item[0] for item in (blob(payload_for(f"ev{i}", 100)) for i in range(3))]
    (tmp_path / "ac" / "quarantine" / f"{'4' * 64}.1.1.bad").write_bytes(b"bad")
    removed = store.evict(0, low_water=0.0)
    assert sorted(removed) == sorted(keys)
    assert list(store.iterate()) == []


def test_other_process_writes_are_noticed(tmp_path: Path) -> None:
    # Two handles model two processes: each reads the other's writes from the shared
    # journal, so together they never overshoot the cap.
    cap = 200_000
    a = LocalStore(tmp_path, max_size=cap)
    b = LocalStore(tmp_path, max_size=cap)
    for i in range(60):  # 150 kB each: neither handle alone exceeds the cap
        (a if i % 2 else b).put(*blob(payload_for(f"two{i}", 5000)))
        assert a.disk_usage() <= cap
