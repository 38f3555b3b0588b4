"""The ``artcache`` CLI against stores that tests populate, each call a real process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from artcache import Cache, NewBlob
from artcache.config import Settings
from artcache.store import LocalStore

from .conftest import run_cli

SETTINGS = Settings(store_urls=("memory://",))
KEYS = [c * 64 for c in "abc"]


@pytest.fixture
def populated(store_dir: Path) -> Path:
    cache = Cache(LocalStore(store_dir), settings=SETTINGS, strict=True)
    shared = os.urandom(50_000)
    for i, key in enumerate(KEYS):
        cache.save(
            key,
            [NewBlob("code", f"def f{i}(x): return x".encode()), NewBlob("constant", shared, "w"),
             NewBlob("kernel", os.urandom(2000 * (i + 1)), f"k{i}.so")],
            factors={"graph": str(i) * 64, "torch": "t" * 64},
            environment={"torch": "2.13.0"},
            summary={
                "title": f"model {i}",
                "graph": f"def forward(x):\n    return x * {i}",
                "kernels": [{"name": f"cpp_fused_{i}", "kind": "cpp", "size": 2000 * (i + 1)}],
                "constants": [{"name": "w", "shape": [50, 250], "dtype": "float32", "bytes": 50_000}],
            },
        )
        # Distinct last-use times so LRU order is well defined (a != b != c).
        os.utime(store_dir / "ac" / key[:2] / key, (time.time() - 1000 * (3 - i),) * 2)
    return store_dir


def url(path: Path) -> str:
    return "file://" + str(path)


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("ls", "inspect", "stats", "verify", "gc", "rm", "export", "import", "keygen"):
        assert cmd in proc.stdout


def test_ls_json(populated: Path) -> None:
    proc = run_cli("ls", "--format", "json", env={"ARTCACHE_STORE": url(populated)})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(e["key"] for e in doc["entries"]) == KEYS
    assert all(e["status"] == "ok" and e["blob_count"] == 3 for e in doc["entries"])
    assert {e["title"] for e in doc["entries"]} == {"model 0", "model 1", "model 2"}


def test_ls_table(populated: Path) -> None:
    proc = run_cli("--store", url(populated), "ls")
    assert proc.returncode == 0, proc.stderr
    assert "3 entries, 7 blobs" in proc.stdout and "model 1" in proc.stdout


def test_inspect_by_prefix(populated: Path) -> None:
    proc = run_cli("--store", url(populated), "inspect", "bbbb")
    assert proc.returncode == 0, proc.stderr
    for text in ("model 1", "cpp_fused_1", "constant", "torch"):
        assert text in proc.stdout
    assert "return x * 1" not in proc.stdout  # the graph only with --graph
    assert "return x * 1" in run_cli("--store", url(populated), "inspect", "bbbb", "--graph").stdout
    doc = json.loads(run_cli("--store", url(populated), "inspect", "bbbb", "--format", "json").stdout)
    assert doc["key"] == KEYS[1] and len(doc["blobs"]) == 3


def test_inspect_unknown_entry_is_a_clear_error(populated: Path) -> None:
    proc = run_cli("--store", url(populated), "inspect", "ffff")
    assert proc.returncode == 2 and "no entry matches" in proc.stderr


def test_stats_json(populated: Path) -> None:
    doc = json.loads(run_cli("--store", url(populated), "stats", "--format", "json").stdout)
    assert doc["entries"] == 3 and doc["blobs"] == 7 and doc["orphan_blobs"] == 0


def test_verify_finds_tampering(populated: Path) -> None:
    assert run_cli("--store", url(populated), "verify").returncode == 0
    # Replace a blob with other bytes, re-framed so the local checksum passes: only the
    # SHA-256 check of `verify` can catch this.
    store = LocalStore(populated)
    victim = next(i.key for i in store.iterate("cas/") if i.size == 2000)
    target = populated / "cas" / victim[4:6] / victim[4:]
    os.unlink(target)
    store.put(victim, b"x" * 2000)
    proc = run_cli("--store", url(populated), "verify", "--format", "json")
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert [p["kind"] for p in problems] == ["bad-blob"] and problems[0]["key"] == KEYS[0]


def test_gc_dry_run_then_for_real(populated: Path) -> None:
    before = sorted(p for p in populated.rglob("*") if p.is_file())
    proc = run_cli("--store", url(populated), "gc", "--max-size", "60K", "--dry-run", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["plan"]["deletions"]
    assert sorted(p for p in populated.rglob("*") if p.is_file()) == before
    # Oldest entries go first; the shared constant stays with the survivor.
    assert {d["key"] for d in plan if d["key"].startswith("ac/")} == {"ac/" + KEYS[0], "ac/" + KEYS[1]}
    assert run_cli("--store", url(populated), "gc", "--max-size", "60K").returncode == 0
    left = json.loads(run_cli("--store", url(populated), "ls", "--format", "json").stdout)["entries"]
    assert [e["key"] for e in left] == [KEYS[2]] and left[0]["status"] == "ok"
    assert run_cli("--store", url(populated), "verify").returncode == 0


def test_rm_removes_only_exclusive_blobs(populated: Path) -> None:
    assert run_cli("--store", url(populated), "rm", "aaaa", "--dry-run").returncode == 0
    assert len(list(LocalStore(populated).iterate("ac/"))) == 3
    assert run_cli("--store", url(populated), "rm", "aaaa").returncode == 0
    store = LocalStore(populated)
    assert len(list(store.iterate("ac/"))) == 2 and len(list(store.iterate("cas/"))) == 5
    assert run_cli("--store", url(populated), "verify").returncode == 0
