"""Single-flight compiles: several processes that miss the same key at once compile it once.

Leases are real: ``flock`` on a local store's directory, ``SET NX`` on a real
``redis-server``; holders that die are real processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from artcache import Cache, NewBlob
from artcache.config import Settings
from artcache.single_flight import turn
from artcache.store import LocalStore, TieredStore, ac_key, open_store

from .conftest import REPO
from .redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

KEY = "ab" * 32
SETTINGS = Settings(store_urls=("memory://",))


def _save_entry(store_url: str, key: str = KEY) -> None:
    Cache(store_url, settings=SETTINGS).save(key, [NewBlob("code", b"x")], factors={}, environment={})


# -- leases ---------------------------------------------------------------------------
def test_a_local_lease_has_one_holder_and_frees_on_release(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    first = store.try_lease(ac_key(KEY))
    assert first is not None
    assert store.try_lease(ac_key(KEY)) is None
    assert store.try_lease(ac_key("cd" * 32)) is not None  # another key is another lease
    first.release()
    again = store.try_lease(ac_key(KEY))
    assert again is not None
    again.release()


_HOLD = """
import sys, time
from artcache.store import open_store
lease = open_store(sys.argv[1]).try_lease("ac/" + "ab" * 32)
print("held" if lease is not None else "busy", flush=True)
time.sleep(600)
"""


def _holder(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, url], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_local_lease_frees_when_its_holder_dies(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 's'}"
    holder = _holder(url)
    store = open_store(url)
    try:
        assert store.try_lease(ac_key(KEY)) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        lease = store.try_lease(ac_key(KEY))
        assert lease is not None, "the kernel drops a dead holder's flock"
        lease.release()
    finally:
        holder.kill()


def test_a_local_lease_never_follows_a_symlink(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (tmp_path / "s" / "leases").mkdir(exist_ok=True)
    os.symlink(outside, tmp_path / "s" / "leases" / f"ac-{KEY}")
    with pytest.raises(Exception):
        store.try_lease(ac_key(KEY))
    assert outside.read_text() == "keep"


def test_a_redis_lease_has_one_holder_and_expires_when_its_holder_dies(redis_server: RedisServer) -> None:  # noqa: F811
    url = f"{redis_server.url}?prefix={uuid.uuid4().hex}"
    holder = _holder(url)
    store = open_store(url)
    try:
        assert store.try_lease(ac_key(KEY)) is None
        time.sleep(0.5)
        assert store.try_lease(ac_key(KEY)) is None, "a live holder renews its lease"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 40  # the default TTL is 30 s
        lease = None
        while lease is None and time.monotonic() < deadline:
            lease = store.try_lease(ac_key(KEY))
            time.sleep(0.5)
        assert lease is not None, "a dead holder's lease expires"
        lease.release()
        again = store.try_lease(ac_key(KEY))
        assert again is not None
        again.release()
    finally:
        holder.kill()


# -- the turn ------------------------------------------------------------------------------
def test_a_waiter_loads_what_the_leader_saved(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 's'}"
    store = open_store(url)
    with turn(store, KEY) as leader:
        assert leader.compile and leader.reason == "leader"
        seen: list[object] = []

        def wait() -> None:
            with turn(open_store(url), KEY) as waiter:
                seen.append(waiter)

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.3)
        assert not seen, "the waiter waits while the leader compiles"
        _save_entry(url)
    thread.join(10)
    assert len(seen) == 1 and not seen[0].compile and seen[0].reason == "saved"  # type: ignore[attr-defined]


def test_a_wait_is_bounded(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    lease = store.try_lease(ac_key(KEY))
    start = time.monotonic()
    with turn(store, KEY, max_wait_s=0.5) as waiter:
        assert waiter.compile and waiter.reason == "wait-timeout"
    assert time.monotonic() - start < 3
    assert lease is not None
    lease.release()


def test_a_leader_that_saves_nothing_does_not_serialize_the_waiters(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    lease = store.try_lease(ac_key(KEY))
    results: list[object] = []

    def wait() -> None:
        with turn(LocalStore(tmp_path / "s"), KEY) as waiter:
            results.append(waiter)
            time.sleep(0.5)  # "compiling" while the others decide

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert lease is not None
    lease.release()  # the leader ends without an entry
    start = time.monotonic()
    for t in threads:
        t.join(10)
    assert all(r.compile for r in results) and len(results) == 3  # type: ignore[attr-defined]
    assert time.monotonic() - start < 1.4, "the waiters compiled side by side, not one after another"


def test_an_unusable_entry_is_not_waited_for(tmp_path: Path) -> None:
    """The entry exists but this process could not use it: compile now, never load it again."""
    url = f"file://{tmp_path / 's'}"
    _save_entry(url)
    with turn(open_store(url), KEY) as t:
        assert t.compile and t.reason == "entry-unusable"


def test_off_stores_and_setting(tmp_path: Path) -> None:
    with turn(open_store("memory://"), KEY) as t:
        assert t.compile and t.reason == "no-leases"
    with turn(LocalStore(tmp_path / "s"), KEY, enabled=False) as t:
        assert t.compile and t.reason == "off"
    tiered = TieredStore([LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")])
    assert tiered.supports_leases
    with turn(tiered, KEY) as t:
        assert t.compile and t.reason == "leader"


# -- processes -----------------------------------------------------------------------------
_COMPILE = """
import json, sys, time, torch
import artcache
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
cache = artcache.Cache()
f = torch.compile(model, backend=cache.backend())
sys.stdin.readline()  # start together
out = f(torch.ones(4, 64))
s = cache.stats()
print(json.dumps({"saves": s.saves, "hits": s.hits, "sum": out.sum().item()}))
"""


def _race(tmp: Path, n: int, env: dict[str, str]) -> list[dict[str, float]]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full.update({"PYTHONPATH": str(REPO), "ARTCACHE_STORE": f"file://{tmp / 'store'}", **env})
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _COMPILE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**full, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind{i}")},
        ))
    time.sleep(8)  # let every process import torch and build its model
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_processes_that_miss_together_compile_once(tmp_path: Path) -> None:
    results = _race(tmp_path, 3, {})
    assert sum(r["saves"] for r in results) == 1, results
    assert sum(r["hits"] for r in results) == 2, results
    assert len({r["sum"] for r in results}) == 1


@pytest.mark.slow
def test_single_flight_off_compiles_in_every_process(tmp_path: Path) -> None:
    results = _race(tmp_path, 2, {"ARTCACHE_SINGLE_FLIGHT": "0"})
    assert sum(r["saves"] for r in results) == 2, results


def test_the_setting_is_read_from_the_environment() -> None:
    from artcache.config import settings_from_env

    assert settings_from_env({}).single_flight
    assert not settings_from_env({"ARTCACHE_SINGLE_FLIGHT": "0"}).single_flight

