"""What the ``artcache`` CLI shows: ls sorted, filtered and limited, stats with the hit rate
and the cap, inspect summary first, verify's findings (corrupt vs absent, quarantine,
misfiled, signer and trust), explain's ranking, and stored strings always escaped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from artcache import signing
from artcache.activity import ActivityLog
from artcache.config import Settings

from .conftest import run_cli
from .test_cli_ops import SETTINGS, _save, url

HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\r\u202eorez\u200b"


def _json(store: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    proc = run_cli("--store", url(store), *args, "--format", "json", env=env)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def three(store_dir: Path) -> Path:
    _save(store_dir, "a" * 64, title="alpha net", size=30_000, age_s=300)
    _save(store_dir, "b" * 64, title="beta net", size=1_000, age_s=100)
    _save(store_dir, "c" * 64, title="gamma", size=10_000, age_s=200)
    return store_dir


# -- ls ----------------------------------------------------------------------------------
def test_ls_sorts(three: Path) -> None:
    def order(*args: str) -> list[str]:
        return [e["key"][0] for e in _json(three, "ls", *args)["entries"]]

    assert order() == ["b", "c", "a"]  # last used, newest first
    assert order("--sort", "size") == ["a", "c", "b"]  # largest first
    assert order("--sort", "size", "--reverse") == ["b", "c", "a"]
    assert order("--sort", "title") == ["a", "b", "c"]


def test_ls_filters_and_limits(three: Path) -> None:
    def keys(*args: str) -> list[str]:
        return [e["key"][0] for e in _json(three, "ls", *args)["entries"]]

    assert keys("--filter", "net") == ["b", "a"]
    assert keys("--filter", "title=g*") == ["c"]
    assert keys("--filter", "size>5K", "--sort", "key") == ["a", "c"]
    assert keys("--filter", "net", "--filter", "size<5K") == ["b"]
    assert keys("--filter", "status=ok", "--limit", "2") == ["b", "c"]
    doc = _json(three, "ls", "--limit", "1")
    assert doc["total_entries"] == 3 and len(doc["entries"]) == 1
    table = run_cli("--store", url(three), "ls", "--limit", "1").stdout
    assert "1 of 3 entries" in table


def test_ls_bad_filter_is_a_one_line_error(three: Path) -> None:
    proc = run_cli("--store", url(three), "ls", "--filter", "colour=red")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "colour" in proc.stderr


# -- stats -------------------------------------------------------------------------------
def test_stats_hit_rate_and_cap(three: Path) -> None:
    log = ActivityLog(three)
    for event, fields in (("hit", {"bytes": 100, "saved_seconds": 2.0}), ("hit", {"bytes": 100}),
                          ("hit", {}), ("miss", {"reason": "absent"})):
        log.record(event, key="a" * 64, **fields)
    env = {"ARTCACHE_MAX_SIZE": "1M"}
    doc = _json(three, "stats", env=env)
    assert doc["hit_rate"] == 0.75 and doc["max_size"] == 1 << 20
    assert doc["local_bytes"] > 40_000 and doc["size_used"] == round(doc["local_bytes"] / (1 << 20), 4)
    text = run_cli("--store", url(three), "stats", env=env).stdout
    assert "75.0% (3 of 4 lookups)" in text and "of 1.0 MiB" in text


def test_stats_reset(three: Path) -> None:
    ActivityLog(three).record("hit", key="a" * 64)
    before = _json(three, "stats", "--reset")
    assert before["hits"] == 1 and before["reset"]
    after = _json(three, "stats")
    assert after["hits"] == 0 and after["hit_rate"] is None and after["entries"] == 3


# -- verify ------------------------------------------------------------------------------
def _blob_files(store: Path) -> list[Path]:
    return sorted((p for p in (store / "cas").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_verify_tells_corrupt_from_absent_and_says_what_it_quarantined(three: Path) -> None:
    small, *_rest, big = _blob_files(three)
    small.unlink()  # absent
    data = bytearray(big.read_bytes())
    data[10] ^= 0xFF  # fails the store's checksum: the store quarantines it on read
    big.write_bytes(bytes(data))
    proc = run_cli("--store", url(three), "verify")
    assert proc.returncode == 1
    assert "missing-blob" in proc.stdout and "corrupt-blob" in proc.stdout
    assert f"quarantined 1 file(s) to {three / 'quarantine'}" in proc.stdout
    doc = _json(three, "verify")  # the corrupt blob is gone now, set aside: absent
    kinds = sorted(p["kind"] for p in doc["problems"])
    assert kinds == ["missing-blob", "missing-blob"] and not doc["quarantined"]
    assert len(list((three / "quarantine").iterdir())) == 1


def test_verify_flags_misfiled_manifests(three: Path) -> None:
    shutil.copy(three / "ac" / "aa" / ("a" * 64), (three / "ac" / "dd").mkdir() or three / "ac" / "dd" / ("d" * 64))
    doc = _json(three, "verify")
    assert [(p["kind"], p["key"]) for p in doc["problems"]] == [("misfiled", "d" * 64)]
    listed = {e["key"]: e["status"] for e in _json(three, "ls")["entries"]}
    assert listed["d" * 64] == "misfiled"


def test_signer_shown_and_trust_checked(store_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("nacl")
    ours, theirs = signing.generate(tmp_path / "ours"), signing.generate(tmp_path / "theirs")
    signed = Settings(store_urls=("memory://",), signing_key=ours.private_path)
    _save(store_dir, "a" * 64, title="signed", settings=signed)
    _save(store_dir, "b" * 64, title="unsigned", settings=SETTINGS)
    listed = {e["key"][0]: e["signer"] for e in _json(store_dir, "ls")["entries"]}
    assert listed == {"a": ours.key_id, "b": ""}
    assert ours.key_id in run_cli("--store", url(store_dir), "ls").stdout
    inspect = run_cli("--store", url(store_dir), "inspect", "aaaa").stdout
    assert f"signer       key {ours.key_id}" in inspect
    assert _json(store_dir, "inspect", "aaaa")["signer"] == ours.key_id
    plain = run_cli("--store", url(store_dir), "verify")
    assert plain.returncode == 0 and f"key {ours.key_id} 1" in plain.stdout and "unsigned 1" in plain.stdout

    trusting = {"ARTCACHE_TRUSTED_KEYS": ours.public_path}
    proc = run_cli("--store", url(store_dir), "verify", "--format", "json", env=trusting)
    assert proc.returncode == 1
    assert [(p["kind"], p["key"][0]) for p in json.loads(proc.stdout)["problems"]] == [("untrusted", "b")]
    assert "(trusted: signature verified)" in run_cli("--store", url(store_dir), "inspect", "aaaa", env=trusting).stdout
    assert "unsigned (untrusted: entry is not signed" in run_cli("--store", url(store_dir), "inspect", "bbbb",
                                                                 env=trusting).stdout

    other = {"ARTCACHE_TRUSTED_KEYS": theirs.public_path}
    proc = run_cli("--store", url(store_dir), "verify", env=other)
    assert proc.returncode == 1 and proc.stdout.count("untrusted") >= 2 and "not trusted" in proc.stdout


# -- inspect -----------------------------------------------------------------------------
def test_inspect_summary_first(store_dir: Path) -> None:
    graph = "\n".join(f"    x{i} = x{i - 1} + 1" for i in range(1, 120))
    _save(store_dir, "a" * 64, title="3-op graph, inference", size=3 << 20,
          extra={"graph": f"def forward(x0):\n{graph}", "compile_seconds": 21.5,
                 "factor_values": {"torch": {"version": "2.13.0", "secret_sauce": "long value"}}})
    out = run_cli("--store", url(store_dir), "inspect", "aaaa").stdout
    head = out.splitlines()[:7]
    assert [line.split()[0] for line in head] == ["entry", "function", "kind", "size", "signer", "kernels", "created"]
    assert "3.0 MiB" in head[3] and "inference" in head[2] and "unsigned" in head[4] and "1 (1 cpp" in head[5]
    assert len(out.splitlines()) < 30 and "x100" not in out and "secret_sauce" not in out
    assert "x100" in run_cli("--store", url(store_dir), "inspect", "aaaa", "--graph").stdout
    assert "secret_sauce" in run_cli("--store", url(store_dir), "inspect", "aaaa", "--factors").stdout
    doc = _json(store_dir, "inspect", "aaaa")
    assert "x100" in doc["summary"]["graph"] and doc["summary"]["factor_values"]["torch"]["secret_sauce"]


# -- explain -----------------------------------------------------------------------------
def test_explain_ranks_same_graph_first_and_all_shows_every_entry(store_dir: Path) -> None:
    subject = {"extra": {"factor_values": {}}}
    _save(store_dir, "0" * 64, title="subject", graph="g" * 64, **subject)  # type: ignore[arg-type]
    # Other graphs that differ in one factor only (the graph): nearer by count, but not the cause.
    for c in "1234":
        _save(store_dir, c * 64, title=f"other graph {c}", graph=c * 64)
    # The same graph, saved under another torch: more factors differ, yet it is the cause.
    from artcache import Cache, NewBlob
    from artcache.store import LocalStore

    Cache(LocalStore(store_dir), settings=SETTINGS, strict=True).save(
        "9" * 64, [NewBlob("code", b"x")], factors={"graph": "g" * 64, "torch": "u" * 64, "inputs": "i" * 64},
        environment={}, summary={"title": "same graph, older torch"})
    doc = _json(store_dir, "explain", "0000")
    assert doc["candidates"][0]["key"] == "9" * 64 and doc["candidates"][0]["same_graph"]
    assert len(doc["candidates"]) == 3 and doc["omitted"] == 2
    assert "2 more entries not shown (--all)" in run_cli("--store", url(store_dir), "explain", "0000").stdout
    everything = _json(store_dir, "explain", "0000", "--all")
    assert len(everything["candidates"]) == 5 and everything["omitted"] == 0


# -- escaping ----------------------------------------------------------------------------
def test_stored_strings_are_escaped(store_dir: Path) -> None:
    _save(store_dir, "a" * 64, title=HOSTILE, extra={"inputs": [HOSTILE], "graph": f"def f():\n    # {HOSTILE}"})
    _save(store_dir, "b" * 64, title=HOSTILE)
    for args in (["ls"], ["inspect", "aaaa", "--graph", "--factors"], ["explain", "aaaa", "--all"]):
        proc = run_cli("--store", url(store_dir), *args)
        assert proc.returncode == 0, proc.stderr
        for raw in ("\x1b", "\x07", "\r", "\u202e", "\u200b"):
            assert raw not in proc.stdout, (args, raw)
        assert "evil\\x1b[2J" in proc.stdout and "\\u202e" in proc.stdout, args
