"""Differential program fuzzing: random programs compiled cold, then loaded warm in a fresh
process (tripwires on); outputs must be bitwise equal.  CI runs ``ARTCACHE_FUZZ_N``
programs (default 16, a couple of minutes); set it higher to run more.  Each failing
program is written as a JSON reproducer into ``ARTCACHE_FUZZ_ARTIFACTS`` (default: the
test's temp dir) and named in the failure message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import REPO
from .fuzz.programs import generate

pytestmark = pytest.mark.slow

N = int(os.environ.get("ARTCACHE_FUZZ_N", "16"))
FIRST_SEED = int(os.environ.get("ARTCACHE_FUZZ_SEED", "0"))


def _phase(phase: str, tmp: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full.update(env, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--phase", phase, "--seeds", f"{FIRST_SEED}:{FIRST_SEED + N}",
         "--out", str(out)],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=3000,
    )
    assert proc.returncode == 0, f"{phase}:\n{proc.stderr[-5000:]}"
    return torch.load(out, weights_only=True)  # the test's own result file


def test_random_programs_load_warm_identically(tmp_path: Path) -> None:
    store = f"file://{tmp_path}/store"
    cold = _phase("cold", tmp_path, tmp_path / "cold.pt",
                  {"ARTCACHE_STORE": store, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "i1")})
    warm = _phase("warm", tmp_path, tmp_path / "warm.pt",
                  {"ARTCACHE_STORE": store, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "i2")})
    artifacts = Path(os.environ.get("ARTCACHE_FUZZ_ARTIFACTS", tmp_path / "reproducers"))
    failures = []
    for seed in range(FIRST_SEED, FIRST_SEED + N):
        a, b = cold["results"][str(seed)], warm["results"][str(seed)]
        same = len(a) == len(b) and all(
            x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.nan_to_num(), y.nan_to_num()) for x, y in zip(a, b)
        )
        if not same:
            artifacts.mkdir(parents=True, exist_ok=True)
            path = artifacts / f"fuzz-{seed}.json"
            path.write_text(json.dumps({"program": generate(seed), "why": "warm output differs from cold"}, indent=1))
            failures.append(str(path))
    assert not failures, f"{len(failures)} programs differ; reproducers: {failures}"
    warm_stats = json.loads(warm["stats"])
    assert warm_stats["saves"] == 0 and warm_stats["misses"] == {} and warm_stats["hits"] == N
    assert json.loads(cold["stats"])["saves"] == N
