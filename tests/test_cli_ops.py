"""The ``artcache`` CLI behaves like the tools users know (ccache -s, sccache, hf cache):
quiet under ``| head``, non-zero when a tier it needs is down, listings that sort and
filter, deletes that ask first on a terminal, output free of raw control characters."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artcache import Cache, NewBlob
from artcache.config import Settings
from artcache.store import LocalStore

from .conftest import REPO, run_cli

SETTINGS = Settings(store_urls=("memory://",))


def url(path: Path) -> str:
    return "file://" + str(path)


def _save(store_dir: Path, key: str, *, title: str, size: int = 1000, age_s: float = 0.0,
          settings: Settings = SETTINGS, graph: str | None = None, extra: dict[str, object] | None = None) -> None:
    cache = Cache(LocalStore(store_dir), settings=settings, strict=True)
    cache.save(
        key,
        [NewBlob("code", f"# {key}".encode()), NewBlob("kernel", os.urandom(size), "k.so")],
        factors={"graph": graph or key, "torch": "t" * 64},
        environment={"torch": "2.13.0"},
        summary={"title": title, "graph": "def forward(x):\n    return x", **(extra or {}),
                 "kernels": [{"name": "cpp_fused_0", "kind": "cpp", "size": size}]},
    )
    if age_s:
        os.utime(store_dir / "ac" / key[:2] / key, (time.time() - age_s,) * 2)


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: nothing listens there


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- | head ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["ls"], ["ls", "--format", "json"], ["inspect", "aaaa"], ["verify"]])
def test_piped_to_head_exits_quietly(store_dir: Path, args: list[str]) -> None:
    # Long titles make every listing far larger than a pipe's buffer, so the writes go on
    # after `head` has exited.
    for c in "abcdef":
        _save(store_dir, c * 64, title=f"{c} " * 100_000, extra={"inputs": [f"x{i}" for i in range(20_000)]})
    cmd = [sys.executable, "-m", "artcache.cli", "--store", url(store_dir), *args]
    head = subprocess.run(f"{' '.join(cmd)} | head -c 10", shell=True, env=_cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert head.stdout, head.stderr
    assert head.stderr == "", head.stderr


# -- a tier that is down ----------------------------------------------------------------
@pytest.fixture
def tiered_dead(store_dir: Path) -> str:
    _save(store_dir, "a" * 64, title="model a")
    return f"{url(store_dir)},redis://127.0.0.1:{_dead_port()}/0?timeout=0.5"


def test_verify_fails_when_a_tier_is_down(tiered_dead: str) -> None:
    proc = run_cli("--store", tiered_dead, "verify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "redis://127.0.0.1" in proc.stdout + proc.stderr
    doc = json.loads(run_cli("--store", tiered_dead, "verify", "--format", "json").stdout)
    assert not doc["ok"] and [p["kind"] for p in doc["problems"]] == ["tier-down"]


def test_export_fails_when_a_tier_is_down(tiered_dead: str, tmp_path: Path) -> None:
    proc = run_cli("--store", tiered_dead, "export", str(tmp_path / "b.bundle"), "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "down" in proc.stderr and "redis://127.0.0.1" in proc.stderr


def test_import_fails_when_a_tier_is_down(tiered_dead: str, store_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.bundle"
    assert run_cli("--store", url(store_dir), "export", str(bundle), "--no-progress").returncode == 0
    proc = run_cli("--store", tiered_dead, "import", str(bundle), "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "down" in proc.stderr and "redis://127.0.0.1" in proc.stderr


def test_rm_fails_when_a_tier_is_down_and_ls_warns(tiered_dead: str) -> None:
    listing = run_cli("--store", tiered_dead, "ls")
    assert listing.returncode == 0 and "model a" in listing.stdout
    assert listing.stderr.count("\n") == 1 and "is down" in listing.stderr and "timeout" not in listing.stderr
    proc = run_cli("--store", tiered_dead, "rm", "aaaa")
    assert proc.returncode == 1 and "not deleted" in proc.stderr, proc.stdout + proc.stderr


def test_verify_import_export_pass_with_every_tier_up(store_dir: Path, tmp_path: Path) -> None:
    _save(store_dir, "a" * 64, title="model a")
    bundle = tmp_path / "b.bundle"
    assert run_cli("--store", url(store_dir), "export", str(bundle), "--no-progress").returncode == 0
    other = f"{url(tmp_path / 'one')},{url(tmp_path / 'two')}"
    assert run_cli("--store", other, "import", str(bundle), "--no-progress").returncode == 0
    assert run_cli("--store", other, "verify").returncode == 0


# -- rm and gc ask on a terminal ----------------------------------------------------------
def _on_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a terminal as stdin, type ``answer``; (exit code, what it printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "artcache.cli", *args], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=_cli_env())
    os.close(slave)
    os.write(master, answer.encode())
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    return proc.returncode, out.decode()


def test_rm_asks_on_a_terminal(store_dir: Path) -> None:
    _save(store_dir, "a" * 64, title="model a")
    code, out = _on_terminal(["--store", url(store_dir), "rm", "aaaa"], "n\n")
    assert code == 1 and "ac/aaaa" in out and "[y/N]" in out, out
    assert len(list(LocalStore(store_dir).iterate("ac/"))) == 1
    code, out = _on_terminal(["--store", url(store_dir), "rm", "aaaa"], "y\n")
    assert code == 0, out
    assert not list(LocalStore(store_dir).iterate("ac/"))


def test_gc_asks_on_a_terminal_unless_yes(store_dir: Path) -> None:
    for c in "ab":
        _save(store_dir, c * 64, title=f"model {c}", size=20_000, age_s=100 if c == "a" else 0)
    code, out = _on_terminal(["--store", url(store_dir), "gc", "--max-size", "30K"], "\n")
    assert code == 1 and "[y/N]" in out, out
    assert len(list(LocalStore(store_dir).iterate("ac/"))) == 2
    code, out = _on_terminal(["--store", url(store_dir), "gc", "--max-size", "30K", "-y"], "")
    assert code == 0 and "[y/N]" not in out, out
    assert [i.key for i in LocalStore(store_dir).iterate("ac/")] == ["ac/" + "b" * 64]


def test_rm_off_a_terminal_needs_no_answer(store_dir: Path) -> None:
    _save(store_dir, "a" * 64, title="model a")
    assert run_cli("--store", url(store_dir), "rm", "aaaa").returncode == 0
    assert not list(LocalStore(store_dir).iterate("ac/"))
