"""Automatic eviction of a capped local store: whole entries, incremental bookkeeping.

Entries here are saved through ``EntryStore`` (manifest + blobs, the real commit order);
``catalog.verify`` is what ``artcache verify`` runs.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import zlib
from pathlib import Path

import pytest
from artcache.testing import payload_for

from artcache import catalog
from artcache.config import Settings
from artcache.entries import EntryStore
from artcache.entry import NewBlob
from artcache.store import LocalStore
from artcache.store.base import ac_key, cas_key
from artcache.store import _journal, eviction
from artcache.store.eviction import JOURNAL_NAME, MAX_LINE, put_line, remove_line

from .conftest import run_cli, run_python


def entry_store(store: LocalStore) -> EntryStore:
    return EntryStore(store, settings=Settings(store_urls=(store.url,), compress=False), strict=True)


def save(entries: EntryStore, name: str, blobs: list[bytes], *, check: bool = True) -> str:
    key = payload_key(name)
    manifest = entries.save(key, [NewBlob("source", b, f"b{i}") for i, b in enumerate(blobs)],
                            factors={"graph": name}, environment={})
    assert manifest is not None or not check
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


def test_a_save_larger_than_the_cap_keeps_its_own_blobs(tmp_path: Path) -> None:
    # The blobs of a save are one batch: evicting for it never takes one of them, so the
    # manifest that follows never names a blob that is gone.  The store stays over its
    # cap until the next save, which evicts the whole entry.
    store = LocalStore(tmp_path, max_size=8_000, durable=False)
    entries = entry_store(store)
    big = save(entries, "big", [payload_for(f"big{i}", 3000) for i in range(3)])
    assert_whole_entries(store)
    assert entries.lookup(big) is not None
    small = save(entries, "small", [payload_for("small", 2000)])
    assert not store.has(ac_key(big)) and entries.lookup(small) is not None
    assert store.disk_usage() <= 8_000
    assert_whole_entries(store)


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


# -- the journal: a cache of the store, rebuilt when missing or damaged ------------------
def journal(store: LocalStore) -> Path:
    return store.root / JOURNAL_NAME


def fill(entries: EntryStore, tag: str, n: int, size: int = 3000, *, check: bool = True) -> list[str]:
    return [save(entries, f"{tag}{i}", [payload_for(f"{tag}{i}a", size), payload_for(f"{tag}{i}b", size)],
                 check=check)
            for i in range(n)]


def test_a_missing_journal_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=100_000, durable=False)
    entries = entry_store(store)
    fill(entries, "a", 5)
    journal(store).unlink()
    # Entries written while there was no journal (by an uncapped process) count too.
    fill(entry_store(LocalStore(tmp_path, durable=False)), "b", 5)
    assert not journal(store).exists()
    other = LocalStore(tmp_path, max_size=100_000, durable=False)
    fill(entry_store(other), "c", 30)
    assert journal(store).exists()
    assert store.disk_usage() <= 100_000
    assert_whole_entries(store)


def test_writes_of_an_uncapped_process_are_counted(tmp_path: Path) -> None:
    capped = LocalStore(tmp_path, max_size=100_000, durable=False)
    entries = entry_store(capped)
    fill(entries, "a", 3)  # builds the journal
    fill(entry_store(LocalStore(tmp_path, durable=False)), "u", 20)  # 120 kB, over the cap
    fill(entries, "b", 1)
    assert capped.disk_usage() <= 100_000
    assert_whole_entries(capped)


@pytest.mark.parametrize("damage", [
    "garbage", "torn-line", "bad-crc", "huge-line", "forged-lines", "wrong-header", "empty",
    "directory", "fifo", "symlink", "hardlink", "snapshot-bit-flip", "snapshot-cut-short",
    "snapshot-refs-left-over", "snapshot-key-twice", "forged-snapshot",
])
def test_a_damaged_or_hostile_journal_never_breaks_a_save(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    store = LocalStore(root, max_size=100_000, durable=False)
    entries = entry_store(store)
    fill(entries, "a", 5)
    path = journal(store)
    if damage.startswith("snapshot"):
        path.unlink()
        store.evict(1 << 40)  # rebuilt from a scan: the five entries are in its snapshot
    good = path.read_bytes()
    forged_key = payload_key("forged")
    header, _newline, rest = good.partition(b"\n")
    snapshot_bytes = int(header.split(b" ")[5])
    if damage.startswith("snapshot"):
        assert snapshot_bytes > 5 * 51
    if damage == "snapshot-bit-flip":
        at = len(header) + 1 + snapshot_bytes // 2
        path.write_bytes(good[:at] + bytes([good[at] ^ 1]) + good[at + 1:])
    elif damage in ("snapshot-cut-short", "snapshot-refs-left-over", "snapshot-key-twice", "forged-snapshot"):
        # Well-formed headers with a matching CRC over snapshots that say the wrong thing.
        index = eviction.Index()
        if damage == "forged-snapshot":  # parses: a huge entry that is not there
            index.put(f"ac/{forged_key}", 1 << 40, 1, (f"cas/{'ab' * 32}",))
        index.put(f"cas/{'cd' * 32}", 10, 1)
        snap = index.snapshot()
        files = len(index.files)
        if damage == "snapshot-cut-short":
            snap = snap[:-3]
        elif damage == "snapshot-refs-left-over":
            snap += b"x" * 32
        elif damage == "snapshot-key-twice":
            snap, files = snap + snap, 2
        path.write_bytes(eviction.header_line(index.total, files, len(snap), zlib.crc32(snap)) + snap)
    if damage.startswith("snapshot"):
        assert LocalStore(root)._journal.index() is None  # refused: the next eviction rebuilds it
    elif damage == "forged-snapshot":
        loaded = LocalStore(root)._journal.index()
        assert loaded is not None and loaded.total == (1 << 40) + 10
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "torn-line":
        path.write_bytes(good + good.splitlines(keepends=True)[-1][:20])
    elif damage == "bad-crc":
        path.write_bytes(good.replace(b" 3028 ", b" 9028 ", 1))
    elif damage == "huge-line":
        path.write_bytes(good + b"+ " + b"x" * (MAX_LINE + 10))
    elif damage == "forged-lines":
        # Well-formed lines: a huge entry that does not exist, a path-like name, and a
        # removal of a live entry.  Forged lines can make eviction run early; they can't
        # name a path or leave an entry incomplete.
        path.write_bytes(good + put_line(f"ac/{forged_key}", 1 << 40, 1, ["ab" * 32])
                         + b"+ cas ../../outside 10 1 - 0badc0de\n"
                         + remove_line(f"ac/{payload_key('a0')}", 3028))
    elif damage == "wrong-header":
        path.write_bytes(b"H 99 x " + good.split(b" ", 3)[3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    elif damage == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif damage == "symlink":
        path.unlink()
        path.symlink_to(outside)
    elif damage == "hardlink":
        path.unlink()
        os.link(outside, path)
    before = outside.read_bytes(), outside.stat().st_mtime_ns
    # A fresh process (replays the journal) and the one that wrote it (reads its tail).
    for handle in (LocalStore(root, max_size=100_000, durable=False), store):
        fill(EntryStore(handle, settings=Settings(store_urls=(handle.url,), compress=False), strict=False),
             f"after-{id(handle)}", 25, check=False)
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == before
    assert store.disk_usage() <= 100_000
    if damage != "directory":  # a directory under the journal's name can't be replaced
        assert path.is_file() and not path.is_symlink() and path.stat().st_nlink == 1
    assert_whole_entries(store)
    assert sum(store.has(ac_key(payload_key(f"after-{id(store)}{i}"))) for i in range(25)) >= 5


def test_a_put_journaled_but_never_published_is_dropped(tmp_path: Path) -> None:
    # A writer killed between its journal line and its rename leaves a line for a file
    # that is not there: eviction drops it and frees nothing for it.
    store = LocalStore(tmp_path, max_size=100_000, durable=False)
    entries = entry_store(store)
    fill(entries, "a", 3)
    with open(journal(store), "ab") as f:
        f.write(put_line(f"cas/{'e' * 64}", 50_000, 1))
    fill(entries, "b", 20)
    assert store.disk_usage() <= 100_000
    present = [k for k in (payload_key(f"b{i}") for i in range(20)) if store.has(ac_key(k))]
    assert len(present) >= 10  # the phantom 50 kB did not crowd out real entries
    assert_whole_entries(store)


def test_journal_is_compacted_and_other_processes_follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "COMPACT_MIN_LINES", 200)  # compact often, not after 16k lines
    a = LocalStore(tmp_path, max_size=60_000, durable=False)
    b = LocalStore(tmp_path, max_size=60_000, durable=False)
    ea, eb = entry_store(a), entry_store(b)
    inode = None
    replaced = 0
    for i in range(700):  # over 2000 lines for a store of about 20 files
        save(ea if i % 2 else eb, f"c{i}", [payload_for(f"c{i}", 2000)])
        st = journal(a).stat()
        replaced += inode is not None and st.st_ino != inode
        inode = st.st_ino
    assert replaced >= 1
    assert journal(a).stat().st_size < 50_000
    assert a.disk_usage() <= 60_000
    assert_whole_entries(a)


# -- concurrent processes -------------------------------------------------------------
FORK = multiprocessing.get_context("fork")


def _saver(root: str, seed: int, seconds: float, results) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(root, max_size=120_000, durable=False)
    entries = EntryStore(store, settings=Settings(store_urls=(store.url,), compress=False), strict=False)
    rng = random.Random(seed)
    shared = [payload_for(f"pool{i}", 2000) for i in range(4)]
    saved: list[str] = []
    hits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if saved and rng.random() < 0.3:
            hits += entries.lookup(rng.choice(saved)) is not None
        else:
            n = len(saved)
            saved.append(save(entries, f"w{seed}-{n}", [rng.choice(shared), payload_for(f"w{seed}-{n}", 3000)],
                              check=False))
    results.put((seed, len(saved), hits, dict(entries.stats().errors)))


def test_processes_saving_under_one_cap_leave_only_whole_entries(tmp_path: Path) -> None:
    results = FORK.Queue()
    workers = [FORK.Process(target=_saver, args=(str(tmp_path), seed, 3.0, results)) for seed in range(4)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
        assert w.exitcode == 0
    assert all(saves > 20 for _seed, saves, _hits, _errors in reports)
    assert [errors for *_rest, errors in reports] == [{}] * 4
    store = LocalStore(tmp_path)
    assert store.disk_usage() <= 120_000 + 4 * 3100
    assert_whole_entries(store)


# -- end to end: torch.compile under ARTCACHE_MAX_SIZE, then `artcache verify` -------------
_COMPILE = """
import sys, torch
ops = [torch.sin, torch.cos, torch.tanh, torch.exp, torch.sigmoid, torch.relu, torch.erf]
for i in map(int, sys.argv[1:]):
    op = ops[i]
    f = torch.compile(lambda x, op=op, i=i: op(x) * (i + 2) + 1, backend="artcache")
    x = torch.randn(8, 8)
    assert torch.allclose(f(x), op(x) * (i + 2) + 1)
print("ok")
"""


@pytest.mark.slow
def test_compiles_under_a_cap_leave_a_store_that_verifies(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    env = {"ARTCACHE_STORE": f"file://{store_dir}", "ARTCACHE_STRICT": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    first = run_python(_COMPILE.replace("sys.argv[1:]", "[0]"), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    one_entry = LocalStore(store_dir).disk_usage()
    # Room for about two and a half entries; four more compiles.
    env["ARTCACHE_MAX_SIZE"] = str(int(one_entry * 2.5))
    proc = run_python(_COMPILE.replace("sys.argv[1:]", "[1, 2, 3, 4]"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert LocalStore(store_dir).disk_usage() <= int(one_entry * 2.5)
    verify = run_cli("--store", f"file://{store_dir}", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    entries = sum(1 for _ in LocalStore(store_dir).iterate("ac/"))
    assert 1 <= entries <= 3


def test_a_new_process_starts_from_the_last_checkpoint(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=60_000, durable=False)
    fill(entry_store(store), "a", 30)  # several evictions, each ending with a checkpoint
    fill(entry_store(LocalStore(tmp_path, durable=False)), "b", 2)  # lines after it
    fresh = LocalStore(tmp_path, max_size=60_000, durable=False)._journal
    total = fresh.total()
    assert fresh._offset > fresh._base_end  # it skipped the lines before the checkpoint
    whole = LocalStore(tmp_path)._journal.index()
    assert whole is not None and total == whole.total
    # A forged checkpoint only shifts when the next eviction comes; the evictor's own
    # index is exact, and its checkpoint puts the total right.
    with open(journal(store), "ab") as f:
        f.write(eviction.checkpoint_line(0))
    fill(entry_store(LocalStore(tmp_path, max_size=60_000, durable=False)), "c", 25)
    assert store.disk_usage() <= 60_000
    assert_whole_entries(store)


def test_own_puts_and_others_lines_enter_the_index_in_journal_order(tmp_path: Path) -> None:
    # A capped process takes its own puts into its index only when it next needs the
    # index; lines other processes appended after them still apply after them.
    a = LocalStore(tmp_path, max_size=10_000_000, durable=False)
    b = LocalStore(tmp_path, max_size=10_000_000, durable=False)
    fill(entry_store(a), "a", 2)
    assert a._journal.index() is not None  # A holds an index from now on
    first, second = cas_key("1" * 64), cas_key("2" * 64)
    a.put(first, b"one")
    a.put(second, b"two")
    assert b.delete(first)  # B's removal comes after A's put in the journal
    b.put(second, b"two, again")  # and B's rewrite after A's
    index = a._journal.index()
    assert index is not None and first not in index.files
    assert index.files[second][0] == len(b"two, again") + 28
    assert index.total == LocalStore(tmp_path)._journal.index().total == a.disk_usage()


def keyspace_bytes(store: LocalStore) -> int:
    return sum(f.size for space in ("cas", "ac") for f in store._scan_space(space))


def _dies_mid_save(root: str) -> None:
    from artcache.store import _fs

    store = LocalStore(root, max_size=200_000, durable=False)
    published = [0]
    publish = _fs.publish

    def publish_then_die(*args):  # type: ignore[no-untyped-def]
        if published[0] == 3:
            os._exit(17)  # killed: the save's lines are journaled, 3 of its 10 blobs published
        published[0] += 1
        publish(*args)

    _fs.publish = publish_then_die
    save(entry_store(store), "dies", [payload_for(f"dies{i}", 3000) for i in range(10)])


def test_a_writer_killed_in_the_middle_of_a_save_leaves_only_whole_entries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=200_000, durable=False)
    entries = entry_store(store)
    fill(entries, "a", 10)
    child = FORK.Process(target=_dies_mid_save, args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 17
    phantoms = 7 * (3000 + 28)  # journaled, never published
    assert LocalStore(tmp_path)._journal.index().total == keyspace_bytes(store) + phantoms
    fill(entries, "b", 40)  # evictions: the lines of files that are not there are dropped
    assert store.disk_usage() <= 200_000
    assert_whole_entries(store)
    assert LocalStore(tmp_path)._journal.index().total == keyspace_bytes(store)


def test_threads_saving_under_one_cap_keep_the_index_exact(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = LocalStore(tmp_path, max_size=150_000, durable=False)

    def saver(n: int) -> None:
        entries = entry_store(store)
        for i in range(40):
            save(entries, f"t{n}-{i}", [payload_for("shared", 2000), payload_for(f"t{n}-{i}", 3000)])

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(saver, n) for n in range(4)]:
            done.result()  # a thread's failure fails the test
    assert store.disk_usage() <= 150_000 + 4 * 5100
    assert_whole_entries(store)
    assert store._journal.index().total == keyspace_bytes(store)
    assert LocalStore(tmp_path)._journal.index().total == keyspace_bytes(store)


def test_a_file_stamped_before_1970_keeps_the_journal_whole(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_size=100_000, durable=False)
    entries = entry_store(store)
    fill(entries, "a", 3)
    old = blob_path(store, payload_for("a0a", 3000))
    os.utime(old, ns=(-10**9, -10**9), follow_symlinks=False)
    journal(store).unlink()
    store.evict(1 << 40)  # rebuilt from a scan that finds the backdated blob
    index = LocalStore(tmp_path)._journal.index()
    assert index is not None and index.files[cas_key(old.name)][1] == 0
    fill(entries, "b", 30)
    assert not old.exists()  # the least recently used
    assert_whole_entries(store)


@pytest.mark.parametrize("window", [97, 1000, 256 << 10])
def test_the_last_checkpoint_is_found_behind_many_lines(tmp_path: Path, window: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "_CHECKPOINT_WINDOW", window)  # windows of any size find it
    store = LocalStore(tmp_path, max_size=60_000, durable=False)
    fill(entry_store(store), "a", 30)  # evictions, each ending with a checkpoint
    text = journal(store).read_bytes()
    fill(entry_store(LocalStore(tmp_path, durable=False)), "b", 20)  # 60 lines after it
    started = []
    search = _journal.Journal._from_checkpoint

    def spy(self, size):  # type: ignore[no-untyped-def]
        search(self, size)
        started.append(self._offset)

    monkeypatch.setattr(_journal.Journal, "_from_checkpoint", spy)
    total = LocalStore(tmp_path, max_size=60_000, durable=False)._journal.total()
    last = text.rfind(b"\nT ")
    assert started == [text.index(b"\n", last + 1) + 1]  # just after the last checkpoint
    whole = LocalStore(tmp_path)._journal.index()
    assert whole is not None and total == whole.total
