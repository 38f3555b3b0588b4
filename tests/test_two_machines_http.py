"""Two "machines" sharing one HTTP cache server (nginx with WebDAV), each a fresh process
with its own local tier (DESIGN.md "Tests": an in-process hit proves nothing).  The Redis
version is ``test_two_machines.py``; this one mirrors it over HTTP.

Machine A compiles cold into ``file:///A,http://nginx/...``.  Then, from A's data:

* B (tripwires installed, empty local tier) warm-starts with no compile and ends up with
  A's entries backfilled into its own local tier;
* C finds every blob on the server damaged: nothing bad is served, C compiles, results match;
* D's server stops answering mid-run (SIGSTOP): the next program misses within the
  bounded wait, compiles and saves locally, results match.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import run_python
from .nginx_server import NginxServer, fresh_nginx_server, nginx_server  # noqa: F401 (fixtures)
from .test_two_machines import (
    PROGRAMS,
    _assert_local_blobs_match_addresses,
    _assert_same_results,
    _env,
    _local_entries,
    _runner,
)

pytest.importorskip("urllib3", reason="urllib3 is not installed (pip install 'artcache[http]')")

pytestmark = pytest.mark.slow

PREFIX = "machine-a"


@pytest.fixture(scope="module")
def machine_a(nginx_server: NginxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("machine-a-http")
    remote = nginx_server.url("nolist", PREFIX)  # like bazel-remote: no listing
    cold = _runner("cold", tmp / "cold.pt", _env(tmp / "local", remote, tmp / "ind"))
    assert cold["stats"]["saves"] >= len(PROGRAMS) and cold["stats"]["errors"] == {}
    yield {"tmp": tmp, "remote": remote, "server": nginx_server, **cold}


def _served_files(server: NginxServer, prefix: str) -> list[Path]:
    return sorted(p for p in (server.root / "nolist" / prefix).rglob("*") if p.is_file())


def test_machine_b_warm_starts_from_http_and_backfills(machine_a: dict[str, Any], tmp_path: Path) -> None:
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
results, stop_pids = {{}}, {stop_pids!r}
for i, name in enumerate({names!r}):
    if i == 1:
        for pid in stop_pids:
            os.kill(pid, signal.SIGSTOP)  # the server stops answering between two compiles
    torch._dynamo.reset()
    results[name] = run_program(PROGRAMS[name], lambda fn: torch.compile(fn, backend=backend))
s = cache.stats()
torch.save({{"results": results, "stats": json.dumps({{"hits": s.hits, "misses": dict(s.misses),
    "saves": s.saves, "errors": dict(s.errors), "lookup_seconds": s.lookup_seconds}})}}, {out!r})
"""


def _lenient(out: Path, env: dict[str, str], names: tuple[str, ...], stop_pids: list[int] | None = None) -> dict[str, Any]:
    proc = run_python(_LENIENT.format(names=names, out=str(out), stop_pids=stop_pids or []), env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = torch.load(out, weights_only=True)
    return {"results": result["results"], "stats": json.loads(result["stats"]), "stderr": proc.stderr}


def test_damaged_blobs_on_the_server_are_not_served(machine_a: dict[str, Any], tmp_path: Path) -> None:
    server: NginxServer = machine_a["server"]
    shutil.copytree(server.root / "nolist" / PREFIX, server.root / "nolist" / "damaged")
    damaged = 0
    for path in _served_files(server, "damaged"):
        if path.parent.name == "cas":
            value = path.read_bytes()
            path.write_bytes(bytes([value[0] ^ 0xFF]) + value[1:])  # same length, wrong bytes
            damaged += 1
    assert damaged > 0
    names = PROGRAMS[:1]
    local_c = tmp_path / "local-c"
    run = _lenient(tmp_path / "c.pt", _env(local_c, server.url("nolist", "damaged"), tmp_path / "ind-c"), names)
    stats = run["stats"]
    assert stats["hits"] == 0 and stats["saves"] >= 1  # detected, not served: C compiled
    assert any("CorruptEntryError" in kind for kind in stats["errors"]), stats["errors"]
    assert "fail their checksum" in run["stderr"]  # the one warning names the cause
    _assert_same_results(machine_a["results"], run["results"], names)
    _assert_local_blobs_match_addresses(local_c)  # no damaged byte reached C's disk


def test_server_stalls_mid_run_compile_continues_locally(
    machine_a: dict[str, Any], fresh_nginx_server: NginxServer, tmp_path: Path  # noqa: F811
) -> None:
    fresh = fresh_nginx_server  # a server of this test's own, to stop
    shutil.copytree(machine_a["server"].root / "nolist" / PREFIX, fresh.root / "nolist" / PREFIX)
    local_d = tmp_path / "local-d"
    env = _env(local_d, fresh.url("nolist", PREFIX), tmp_path / "ind-d")
    pids = fresh.all_pids()
    assert len(pids) == 2  # the master and its worker: both stop answering
    try:
        run = _lenient(tmp_path / "d.pt", env, PROGRAMS, stop_pids=pids)
    finally:
        fresh.resume()
    stats = run["stats"]
    # First program: a hit from the server.  Then it stalls: the second misses and compiles.
    assert stats["hits"] >= 1 and stats["saves"] >= 1 and stats["misses"].get("absent", 0) >= 1
    assert set(stats["errors"]) and all("StoreError" in kind for kind in stats["errors"]), stats["errors"]
    assert 1.5 < stats["lookup_seconds"] < 2.5  # every lookup together: one 2 s wait, then skipped
    assert run["stderr"].count("continuing without the cache") == 1  # one warning
    _assert_same_results(machine_a["results"], run["results"], PROGRAMS)
    manifests, _blobs = _local_entries(local_d)
    assert len(manifests) == machine_a["stats"]["saves"]  # backfilled hit + local save
