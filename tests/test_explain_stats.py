"""`artcache explain` names the factors behind a miss; `artcache stats` adds up what every
process did with the local tier (hits, misses by reason, bytes, time saved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli, run_python

pytestmark = pytest.mark.slow

SCRIPT = """
import torch
{setup}
import artcache
from tests.corpus.programs import PROGRAMS
from tests.corpus.runner import run_program
cache = artcache.Cache()
backend = cache.backend()
{before}
run_program(PROGRAMS["views"], lambda fn: torch.compile(fn, backend=backend))
"""


def _compile(tmp: Path, tag: str, *, setup: str = "", before: str = "") -> None:
    env = {"ARTCACHE_STORE": f"file://{tmp / 'store'}", "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{tag}")}
    proc = run_python(SCRIPT.format(setup=setup, before=before), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _json(tmp: Path, *args: str) -> dict[str, Any]:
    proc = run_cli("--store", f"file://{tmp / 'store'}", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("explain")
    _compile(tmp, "cold")  # miss, save
    _compile(tmp, "warm")  # hit
    _compile(tmp, "config", before="torch._inductor.config.epilogue_fusion = False")  # miss: config
    _compile(tmp, "torch", setup="torch.__version__ = '2.99.0'")  # miss: environment
    return tmp


def test_explain_names_the_environment_difference(history: Path) -> None:
    result = _json(history, "explain")  # the last recorded miss: the torch version one
    assert result["source"] == "miss record" and result["stored"]
    nearest = result["candidates"][0]
    assert nearest["same_graph"]
    diffs = {d["factor"]: d["changes"] for d in nearest["differing"]}
    assert list(diffs) == ["environment"]
    assert any("torch 2.99.0 vs 2.13" in c or "torch 2.99.0 vs 2.1" in c for c in diffs["environment"]), diffs


def test_explain_names_the_config_difference(history: Path) -> None:
    listing = _json(history, "ls")["entries"]
    keys = [e["key"] for e in listing]
    found = False
    for key in keys:
        result = _json(history, "explain", key[:12])
        for cand in result["candidates"]:
            diffs = {d["factor"]: d["changes"] for d in cand["differing"]}
            if set(diffs) == {"inductor_config"}:
                assert any("epilogue_fusion" in c for c in diffs["inductor_config"]), diffs
                found = True
    assert found, "no pair of entries differing only in the inductor config"


def test_explain_table_is_readable(history: Path) -> None:
    proc = run_cli("--store", f"file://{history / 'store'}", "explain")
    assert proc.returncode == 0 and "environment" in proc.stdout and "vs" in proc.stdout


def test_stats_add_up_all_processes(history: Path) -> None:
    stats = _json(history, "stats")
    assert stats["hits"] == 1 and stats["saves"] == 3
    assert stats["misses_by_reason"] == {"absent": 3}
    assert stats["seconds_saved"] > 0 and stats["loaded_bytes"] > 0 and stats["entries"] == 3


def test_explain_without_history_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("--store", f"file://{tmp_path / 'empty'}", "explain")
    assert proc.returncode == 2 and "no recorded miss" in proc.stderr
