"""Warm start, proven in fresh processes (DESIGN.md "Tests").

One process compiles the whole corpus cold into a fresh store; a second process, with every
compile entry point patched to raise (tests/_tripwire.py), loads it; a third runs eager.
Warm must equal cold bitwise and eager within tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import REPO, run_python
from .corpus.programs import PROGRAMS

pytestmark = pytest.mark.slow


def _run_phase(phase: str, out: Path, env: dict[str, str]) -> dict[str, Any]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.corpus.runner", "--phase", phase, "--out", str(out)],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=True)  # our own result file, written by the test


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("corpus")
    store = f"file://{tmp}/store"
    cold = _run_phase("cold", tmp / "cold.pt", {"ARTCACHE_STORE": store, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "ind-cold")})
    warm = _run_phase("warm", tmp / "warm.pt", {"ARTCACHE_STORE": store, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "ind-warm")})
    eager = _run_phase("eager", tmp / "eager.pt", {})
    return {"cold": cold, "warm": warm, "eager": eager, "store": store, "tmp": tmp}


def test_corpus_is_large_enough() -> None:
    assert len(PROGRAMS) >= 30
    assert sum(p.train for p in PROGRAMS.values()) >= 8 and sum(p.dynamic for p in PROGRAMS.values()) >= 3


def test_cold_saves_and_warm_only_hits(corpus_runs: dict[str, Any]) -> None:
    cold, warm = json.loads(corpus_runs["cold"]["stats"]), json.loads(corpus_runs["warm"]["stats"])
    assert cold["saves"] >= len(PROGRAMS) and cold["hits"] == 0 and not cold["uncacheable"]
    assert warm["saves"] == 0 and warm["misses"] == {} and warm["errors"] == {}
    assert warm["hits"] == cold["saves"]


def test_warm_corpus_never_imports_the_compiler(corpus_runs: dict[str, Any]) -> None:
    """Every hit loaded its graphs without importing Inductor's lowering, codegen or
    select_algorithm (artcache/_lean_load.py); the tripwires import nothing themselves."""
    warm = json.loads(corpus_runs["warm"]["stats"])
    assert warm["compiler_imported"] == {}, warm["compiler_imported"]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_warm_equals_cold_bitwise_and_eager(corpus_runs: dict[str, Any], name: str) -> None:
    cold = corpus_runs["cold"]["results"][name]
    warm = corpus_runs["warm"]["results"][name]
    eager = corpus_runs["eager"]["results"][name]
    for kind in ("outputs", "grads", "inputs_after", "buffers"):
        assert len(cold[kind]) == len(warm[kind]) == len(eager[kind]), kind
        for i, (c, w, e) in enumerate(zip(cold[kind], warm[kind], eager[kind])):
            assert _same(c, w), f"{kind}[{i}]: warm differs from cold"
            if "rng" in PROGRAMS[name].tags or not c.is_floating_point():
                assert c.shape == e.shape
                continue
            torch.testing.assert_close(c, e, atol=1e-4, rtol=1e-3, msg=f"{kind}[{i}] vs eager")
    if PROGRAMS[name].train:
        assert cold["grads"], "training program produced no gradients"


def test_tripwires_catch_a_real_compile(tmp_path: Path) -> None:
    """The warm check can fail: the same tripwires stop a plain Inductor compile."""
    proc = run_python(
        "from tests import _tripwire; _tripwire.install()\n"
        "import torch\n"
        "torch.compile(lambda x: x.sin() + 1)(torch.randn(3))\n",
        env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")},
    )
    assert proc.returncode != 0 and "tripwire" in proc.stderr


_PROBE = """
import json, sys, torch
{setup}
import artcache
from tests.corpus.programs import PROGRAMS
from tests.corpus.runner import run_program
cache = artcache.Cache(strict=True)
backend = cache.backend()
program = PROGRAMS[{name!r}]
{before}
run_program(program, lambda fn: torch.compile(fn, backend=backend))
s = cache.stats()
print(json.dumps({{"hits": s.hits, "misses": s.misses, "saves": s.saves, **({report})}}))
"""


def _probe(
    corpus_runs: dict[str, Any], name: str, *, setup: str = "", before: str = "", tag: str = "", report: str = "{}"
) -> dict[str, Any]:
    tmp = corpus_runs["tmp"]
    store = tmp / f"store-{tag}"
    shutil.copytree(tmp / "store", store)  # each probe saves into its own copy
    proc = run_python(
        _PROBE.format(setup=setup, before=before, name=name, report=report),
        env={"ARTCACHE_STORE": f"file://{store}", "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{tag}")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_unchanged_program_hits_in_probe(corpus_runs: dict[str, Any]) -> None:
    assert _probe(corpus_runs, "mlp_infer", tag="same") == {"hits": 1, "misses": {}, "saves": 0}


@pytest.mark.parametrize(
    "tag,setup,before",
    [
        ("inductor-config", "", "torch._inductor.config.epilogue_fusion = not torch._inductor.config.epilogue_fusion"),
        ("dtype", "", "torch.set_default_dtype(torch.float64)"),
        ("torch-version", "torch.__version__ = '2.99.0+other'", ""),
        ("matmul-precision", "", "torch.set_float32_matmul_precision('medium')"),
    ],
)
def test_changed_factor_misses(corpus_runs: dict[str, Any], tag: str, setup: str, before: str) -> None:
    result = _probe(corpus_runs, "mlp_infer", setup=setup, before=before, tag=tag)
    assert result["hits"] == 0 and result["misses"] == {"absent": 1} and result["saves"] == 1


def test_output_code_hook_still_called_when_graph_module_loaded(corpus_runs: dict[str, Any]) -> None:
    """The lean post-compile skips importing torch._inductor.graph only; where that module
    is loaded (so its test hook may be set), a hit calls the hook as torch's own code does."""
    setup = (
        "import torch._inductor.graph as g\n"
        "seen = []\n"
        "g.GraphLowering.save_output_code = staticmethod(seen.append)\n"
    )
    result = _probe(corpus_runs, "mlp_infer", setup=setup, tag="hook", report='{"seen": len(seen)}')
    assert result["hits"] == 1 and result["seen"] == 1, result


def test_shape_outside_guards_misses(corpus_runs: dict[str, Any]) -> None:
    # dynamic_pointwise was compiled with dim 0 dynamic (sizes 6 and 9); size 1 is outside
    # its guards (0/1 specialization), so the warm process must compile a new entry.
    before = "program = type(program)(**{**program.__dict__, 'second_size': 1})"
    result = _probe(corpus_runs, "dynamic_pointwise", before=before, tag="shape")
    assert result["hits"] == 1 and result["misses"] == {"absent": 1} and result["saves"] == 1


def test_same_program_from_another_checkout_hits(corpus_runs: dict[str, Any], tmp_path: Path) -> None:
    """Paths never enter keys: the corpus copied to another directory hits the same entry."""
    other = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(REPO / "tests", other / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    store = corpus_runs["tmp"] / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    env.update({"ARTCACHE_STORE": f"file://{store}", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind"),
                "PYTHONPATH": f"{other}{os.pathsep}{REPO}"})
    proc = subprocess.run(
        [sys.executable, "-m", "tests.corpus.runner", "--phase", "warm", "--out", str(tmp_path / "o.pt"),
         "--programs", "mlp_train,conv2d"],
        cwd=other, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads(torch.load(tmp_path / "o.pt", weights_only=True)["stats"])
    assert stats["hits"] == 2 and stats["misses"] == {}
