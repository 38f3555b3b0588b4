"""Fault injection on the local store: failing renames, writes and fsyncs, unwritable
directories, writers killed with SIGKILL, and 8 processes hammering the same keys.

The promise checked everywhere: a read returns ``None`` or exactly the bytes that were
written under that key.  Payloads are derived from the key (``payload_for``), so a reader
knows the only correct answer without talking to the writer.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from artcache.errors import StoreError
from artcache.store import LocalStore
from artcache.store import _fs

from artcache.testing import blob, manifest_key, payload_for

# fork, not spawn: workers inherit the imported modules and the precomputed payloads, so
# each of the many short-lived children starts in milliseconds.  They are real processes
# all the same: separate address spaces, killed by a real SIGKILL.
FORK = multiprocessing.get_context("fork")


def key_set(n_keys: int, max_size: int, tag: str) -> dict[str, bytes]:
    """Half manifests (``ac/``), half blobs (``cas/``), sizes spread from 1 kB up."""
    rng = random.Random(tag)
    out: dict[str, bytes] = {}
    for i in range(n_keys):
        size = rng.randrange(1000, max_size)
        if i % 2:
            key = manifest_key(f"{tag}{i}")
            out[key] = payload_for(key, size)
        else:
            key, data = blob(payload_for(f"{tag}{i}", size))
            out[key] = data
    return out


def tmp_files(root: Path) -> list[Path]:
    return list((root / "tmp").iterdir())


def assert_only_whole_values(root: Path, expected: dict[str, bytes]) -> int:
    """Every key reads as None or its exact bytes; no file on disk fails verification.
    Returns how many keys were present."""
    store = LocalStore(root, durable=False)
    present = 0
    for key, data in expected.items():
        got = store.get(key)
        assert got is None or got == data, f"{key}: wrong bytes served"
        present += got is not None
    # A SIGKILL (unlike a power cut) cannot tear a renamed file: nothing may be corrupt.
    assert store.quarantined == 0
    assert list((root / "quarantine").iterdir()) == []
    listed = {info.key for info in store.iterate()}
    assert listed <= set(expected), f"unknown keys listed: {listed - set(expected)}"
    return present


# -- failing rename, write, fsync ----------------------------------------------------
def _failing(error: int):  # type: ignore[no-untyped-def]
    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(error, os.strerror(error))

    return fail


def test_rename_failing_leaves_no_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    key, data = blob(payload_for("rename", 100_000))
    monkeypatch.setattr(_fs.os, "replace", _failing(errno.EIO))
    with pytest.raises(StoreError):
        store.put(key, data)
    monkeypatch.undo()
    assert store.get(key) is None
    assert not store.has(key)
    assert tmp_files(tmp_path) == []
    store.put(key, data)  # the store is usable after the failure
    assert store.get(key) == data


def test_rename_failing_on_overwrite_keeps_the_old_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    key = manifest_key("overwrite")
    store.put(key, b"old manifest")
    monkeypatch.setattr(_fs.os, "replace", _failing(errno.EXDEV))
    with pytest.raises(StoreError):
        store.put(key, b"new manifest that never lands")
    monkeypatch.undo()
    assert store.get(key) == b"old manifest"
    assert tmp_files(tmp_path) == []


def test_rename_failing_after_a_partial_write_of_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The temp file is complete on disk when the rename fails: it must still not be served.
    store = LocalStore(tmp_path)
    key, data = blob(payload_for("partial", 50_000))
    seen: list[bytes] = []

    def replace_fails(src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        seen.append((tmp_path / "tmp" / src).read_bytes())  # the store renames by name, relative to tmp/
        raise OSError(errno.ENOSPC, "no space left")

    monkeypatch.setattr(_fs.os, "replace", replace_fails)
    with pytest.raises(StoreError, match="no space"):
        store.put(key, data)
    monkeypatch.undo()
    assert len(seen) == 1 and seen[0].startswith(data)  # it failed at the very last step
    assert store.get(key) is None
    assert tmp_files(tmp_path) == []


def test_write_failing_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    key, data = blob(payload_for("enospc", 200_000))
    real_write = os.write
    calls = {"writev": 0, "write": 0}

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        calls["writev"] += 1
        return real_write(fd, memoryview(buffers[0])[: len(buffers[0]) // 3])  # a short write

    def write_fails(fd: int, buf: bytes) -> int:
        calls["write"] += 1
        raise OSError(errno.ENOSPC, "no space left on device")

    monkeypatch.setattr(_fs.os, "writev", short_writev)
    monkeypatch.setattr(_fs.os, "write", write_fails)
    with pytest.raises(StoreError, match="no space"):
        store.put(key, data)
    monkeypatch.undo()
    assert calls == {"writev": 1, "write": 1}
    assert store.get(key) is None
    assert tmp_files(tmp_path) == []


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # POSIX lets write return early; the store must finish the file, not publish a torn one.
    store = LocalStore(tmp_path)
    key, data = blob(payload_for("short", 100_000))
    real_write = os.write

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        return real_write(fd, memoryview(buffers[0])[:777])

    def short_write(fd: int, buf: bytes) -> int:
        return real_write(fd, memoryview(buf)[:5000])

    monkeypatch.setattr(_fs.os, "writev", short_writev)
    monkeypatch.setattr(_fs.os, "write", short_write)
    store.put(key, data)
    monkeypatch.undo()
    assert store.get(key) == data
    assert store.quarantined == 0


def test_fsync_failing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path, durable=True)
    key, data = blob(b"fsync fails")
    monkeypatch.setattr(_fs.os, "fsync", _failing(errno.EIO))
    with pytest.raises(StoreError):
        store.put(key, data)
    monkeypatch.undo()
    assert store.get(key) is None
    assert tmp_files(tmp_path) == []


def _make_unwritable(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    # root ignores permission bits; the immutable attribute stops root too.
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory unwritable")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not permitted here: {done.stderr.decode().strip()}")


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o755)


@pytest.mark.parametrize("which", ["tmp", "shard"])
def test_unwritable_directory(tmp_path: Path, which: str) -> None:
    store = LocalStore(tmp_path)
    old_key, old = blob(b"written before")
    store.put(old_key, old)
    key, data = blob(payload_for("readonly-dir", 10_000))
    target = tmp_path / "tmp" if which == "tmp" else tmp_path / "cas" / key[4:6]
    target.mkdir(exist_ok=True)
    _make_unwritable(target)
    try:
        with pytest.raises(StoreError):
            store.put(key, data)
        assert store.get(key) is None
        assert store.get(old_key) == old  # reads need no write access
    finally:
        _make_writable(target)
    assert tmp_files(tmp_path) == []
    store.put(key, data)
    assert store.get(key) == data


# -- writers killed with SIGKILL -----------------------------------------------------
def _writer(root: str, durable: bool, max_size: int | None, seed: int, items: dict[str, bytes], ready, puts) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(root, durable=durable, max_size=max_size)
    rng = random.Random(seed)
    keys = list(items)
    ready.set()
    while True:
        key = rng.choice(keys)
        if rng.random() < 0.1:
            store.delete(key)
        else:
            store.put(key, items[key])
            puts.value += 1


@pytest.mark.slow
def test_writer_killed_with_sigkill_at_random_points(tmp_path: Path) -> None:
    items = key_set(40, 400_000, "kill")
    rng = random.Random(1234)
    kills = 0
    kills_mid_write = 0
    total_puts = 0
    present_after = []
    for round_ in range(24):
        ready, puts = FORK.Event(), FORK.Value("q", 0, lock=False)
        # Alternate durability, and cap the store in half the rounds so that some kills
        # land inside an eviction (holding .evict.lock).
        durable = round_ % 2 == 0
        cap = 3_000_000 if round_ % 4 < 2 else None
        child = FORK.Process(
            target=_writer, args=(str(tmp_path), durable, cap, round_, items, ready, puts), daemon=True
        )
        child.start()
        assert ready.wait(10), "writer did not start"
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        kills += 1
        total_puts += puts.value
        kills_mid_write += bool(tmp_files(tmp_path))
        present_after.append(assert_only_whole_values(tmp_path, items))

    assert kills >= 20
    assert total_puts > 0 and max(present_after) > 0
    # Evidence the kills landed mid-write, not only between writes.
    assert kills_mid_write > 0
    # A killed evictor's lock dies with it (flock): a capped put still evicts promptly.
    survivor = LocalStore(tmp_path, max_size=1_000_000)
    started = time.monotonic()
    survivor.put(*blob(payload_for("after-kills", 100_000)))
    assert time.monotonic() - started < 5
    assert survivor.disk_usage() <= 1_000_000 + sum(p.stat().st_size for p in tmp_files(tmp_path))
    assert_only_whole_values(tmp_path, {**items, **dict([blob(payload_for("after-kills", 100_000))])})


# -- 8 processes on the same keys ----------------------------------------------------
def _hammer(root: str, seed: int, items: dict[str, bytes], seconds: float, results) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(root, durable=False, max_size=2_000_000)
    rng = random.Random(seed)
    keys = list(items)
    reads = hits = wrong = puts = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.4:
            store.put(key, items[key])
            puts += 1
        elif roll < 0.45:
            store.delete(key)
        else:
            got = store.get(key)
            reads += 1
            if got is not None:
                hits += 1
                wrong += got != items[key]
    results.put((seed, reads, hits, wrong, puts, store.quarantined))


@pytest.mark.slow
def test_eight_processes_write_and_read_the_same_keys(tmp_path: Path) -> None:
    items = key_set(24, 200_000, "hammer")
    results = FORK.Queue()
    workers = [
        FORK.Process(target=_hammer, args=(str(tmp_path), seed, items, 2.5, results)) for seed in range(8)
    ]
    for w in workers:
        w.start()
    reports = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
        assert w.exitcode == 0
    assert sorted(r[0] for r in reports) == list(range(8))
    assert sum(r[3] for r in reports) == 0, "a reader got wrong bytes"
    assert sum(r[5] for r in reports) == 0, "a reader saw a corrupt file"
    assert all(r[1] > 0 and r[4] > 0 for r in reports)  # every process both read and wrote
    assert sum(r[2] for r in reports) > 0
    assert_only_whole_values(tmp_path, items)
    # The cap held through concurrent writes and evictions (each of the 8 writers may
    # have had one put, journaled but not yet evicted for, in flight when it stopped).
    store = LocalStore(tmp_path, max_size=2_000_000)
    assert store.disk_usage() <= 2_000_000 + 8 * 200_028
