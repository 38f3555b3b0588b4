"""Two "machines" sharing one Redis, each a fresh process with its own local tier and
environment (DESIGN.md "Tests": an in-process hit proves nothing).

Machine A compiles cold into ``file:///A,redis://``.  Then, each from A's Redis data:

* B (tripwires installed, empty local tier) warm-starts with no compile and ends up with
  A's entries backfilled into its own local tier;
* C finds every blob in Redis tampered: nothing bad is served, C compiles, results match;
* D loses Redis (SIGKILL) mid-run: the next program misses within the bounded wait,
  compiles and saves locally, results match.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from artcache.store import LocalStore

from .conftest import REPO, run_python
from .redis_server import RedisServer, _require_redis, fresh_redis_server, redis_server  # noqa: F401

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'artcache[redis]')")

pytestmark = pytest.mark.slow

PROGRAMS = ("views", "where_mask")  # small and quick to compile on 2 CPU cores
NAMESPACE = "machine-a"


def _env(local: Path, remote: str, inductor: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    env.update({"ARTCACHE_STORE": f"file://{local},{remote}", "TORCHINDUCTOR_CACHE_DIR": str(inductor),
                "PYTHONPATH": str(REPO)})
    return env


def _runner(phase: str, out: Path, env: dict[str, str], programs: str = ",".join(PROGRAMS)) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.corpus.runner", "--phase", phase, "--out", str(out), "--programs", programs],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
    result = torch.load(out, weights_only=True)  # our own result file, written by the test
    return {"results": result["results"], "stats": json.loads(result["stats"])}


def _copy_namespace(source: redis.Redis, target: redis.Redis, old: str, new: str) -> int:
    """Copy every artcache key of namespace ``old`` into namespace ``new`` (maybe on another server)."""
    count = 0
    for name in source.scan_iter(match=f"artcache:v2:{old}:*"):
        target.set(name.replace(f":{old}:".encode(), f":{new}:".encode(), 1), source.get(name))
        count += 1
    return count


@pytest.fixture(scope="module")
def machine_a(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # noqa: F811
    _require_redis()
    tmp = tmp_path_factory.mktemp("machine-a")
    remote = f"{redis_server.url}?prefix={NAMESPACE}"
    cold = _runner("cold", tmp / "cold.pt", _env(tmp / "local", remote, tmp / "ind"))
    assert cold["stats"]["saves"] >= len(PROGRAMS) and cold["stats"]["errors"] == {}
    yield {"tmp": tmp, "remote": remote, "server": redis_server, **cold}


def _assert_same_results(expected: dict[str, Any], got: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        for kind in ("outputs", "grads", "inputs_after", "buffers"):
            assert len(expected[name][kind]) == len(got[name][kind]), (name, kind)
            for a, b in zip(expected[name][kind], got[name][kind]):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"{name} {kind}")


def _local_entries(root: Path) -> tuple[list[str], list[str]]:
    store = LocalStore(root)
    return [i.key for i in store.iterate("ac/")], [i.key for i in store.iterate("cas/")]


def _assert_local_blobs_match_addresses(root: Path) -> None:
    store = LocalStore(root)
    for info in store.iterate("cas/"):
        data = store.get(info.key)
        assert data is not None and hashlib.sha256(data).hexdigest() == info.key[4:], info.key


def test_machine_b_warm_starts_from_redis_and_backfills(machine_a: dict[str, Any], tmp_path: Path) -> None:
    local_b = tmp_path / "local-b"
    assert not local_b.exists()  # B's local tier starts empty
    warm = _runner("warm", tmp_path / "warm.pt", _env(local_b, machine_a["remote"], tmp_path / "ind-b"))
    # The runner's warm phase installs the tripwires: any compile in B would have failed it.
    assert warm["stats"]["hits"] == machine_a["stats"]["saves"]
    assert warm["stats"]["misses"] == {} and warm["stats"]["saves"] == 0 and warm["stats"]["errors"] == {}
    for name in PROGRAMS:  # a loaded entry computes exactly what A's compile computed
        for a, b in zip(machine_a["results"][name]["outputs"], warm["results"][name]["outputs"]):
            assert torch.equal(a, b), name
    manifests, blobs = _local_entries(local_b)
    a_manifests, a_blobs = _local_entries(machine_a["tmp"] / "local")
    assert sorted(manifests) == sorted(a_manifests) and sorted(blobs) == sorted(a_blobs)
    _assert_local_blobs_match_addresses(local_b)


# A machine that does not run strict (the runner is strict): it must degrade, not crash.
_LENIENT = """
import json, os, signal, sys, time, torch
import artcache
from tests.corpus.programs import PROGRAMS
from tests.corpus.runner import run_program
cache = artcache.Cache(strict=False)
backend = cache.backend()
results, kill_pid = {{}}, {kill_pid}
for i, name in enumerate({names!r}):
    if i == 1 and kill_pid:
        os.kill(kill_pid, signal.SIGKILL)  # Redis dies between two compiles of this run
        time.sleep(0.2)
    torch._dynamo.reset()
    results[name] = run_program(PROGRAMS[name], lambda fn: torch.compile(fn, backend=backend))
s = cache.stats()
torch.save({{"results": results, "stats": json.dumps({{"hits": s.hits, "misses": dict(s.misses),
    "saves": s.saves, "errors": dict(s.errors), "lookup_seconds": s.lookup_seconds}})}}, {out!r})
"""


def _lenient(out: Path, env: dict[str, str], names: tuple[str, ...], kill_pid: int = 0) -> dict[str, Any]:
    proc = run_python(_LENIENT.format(names=names, out=str(out), kill_pid=kill_pid), env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = torch.load(out, weights_only=True)
    return {"results": result["results"], "stats": json.loads(result["stats"]), "stderr": proc.stderr}


def test_tampered_blobs_in_redis_are_not_served(machine_a: dict[str, Any], tmp_path: Path) -> None:
    server: RedisServer = machine_a["server"]
    client = redis.Redis.from_url(server.url)
    assert _copy_namespace(client, client, NAMESPACE, "tampered") > 0
    tampered = 0
    for name in client.scan_iter(match="artcache:v2:tampered:cas:*"):
        value = client.get(name)
        if value:
            client.set(name, bytes([value[0] ^ 0xFF]) + value[1:])  # same length, wrong bytes
            tampered += 1
    assert tampered > 0
    names = PROGRAMS[:1]
    local_c = tmp_path / "local-c"
    env = _env(local_c, f"{server.url}?prefix=tampered", tmp_path / "ind-c")
    run = _lenient(tmp_path / "c.pt", env, names)
    stats = run["stats"]
    assert stats["hits"] == 0 and stats["saves"] >= 1  # detected, not served: C compiled
    assert any("CorruptEntryError" in kind for kind in stats["errors"]), stats["errors"]
    assert "fail their checksum" in run["stderr"]  # the one warning names the cause
    _assert_same_results(machine_a["results"], run["results"], names)
    _assert_local_blobs_match_addresses(local_c)  # no tampered byte reached C's disk


def test_redis_killed_mid_run_compile_continues_locally(
    machine_a: dict[str, Any], fresh_redis_server: RedisServer, tmp_path: Path  # noqa: F811
) -> None:
    source = redis.Redis.from_url(machine_a["server"].url)
    target = redis.Redis.from_url(fresh_redis_server.url)
    assert _copy_namespace(source, target, NAMESPACE, NAMESPACE) > 0
    local_d = tmp_path / "local-d"
    env = _env(local_d, f"{fresh_redis_server.url}?prefix={NAMESPACE}", tmp_path / "ind-d")
    run = _lenient(tmp_path / "d.pt", env, PROGRAMS, kill_pid=fresh_redis_server.pid)
    stats = run["stats"]
    # First program: a hit from Redis.  Then Redis dies: the second misses and compiles.
    assert stats["hits"] >= 1 and stats["saves"] >= 1 and stats["misses"].get("absent", 0) >= 1
    assert set(stats["errors"]) and all("StoreError" in kind for kind in stats["errors"]), stats["errors"]
    assert stats["lookup_seconds"] < 2.5  # every lookup together, including the failing one
    assert run["stderr"].count("continuing without the cache") == 1  # one warning
    _assert_same_results(machine_a["results"], run["results"], PROGRAMS)
    manifests, _blobs = _local_entries(local_d)
    assert len(manifests) == machine_a["stats"]["saves"]  # backfilled hit + local save
