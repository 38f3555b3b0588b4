"""Replays of programs the fuzzing campaign found failing (``tests/fuzz/reproducers``),
and of the conditions it found to miss spuriously.

Each reproducer file holds the program (so a later generator cannot change it), its
device and condition, and the outcome it had; replayed here through the same cold and
warm processes, it must no longer fail.  A file with an ``xfail`` reason is a known,
unfixed failure: a strict expected failure, so a fix shows up as an unexpected pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_python
from .fuzz import campaign

pytestmark = pytest.mark.slow

REPRODUCERS = sorted((Path(__file__).parent / "fuzz" / "reproducers").glob("*.json"))


def _case(path: Path) -> Any:
    data = json.loads(path.read_text())
    marks = [pytest.mark.xfail(strict=True, reason=data["xfail"])] if data.get("xfail") else []
    return pytest.param(path, marks=marks, id=path.stem)


@pytest.mark.parametrize("path", [_case(p) for p in REPRODUCERS])
def test_reproducer_no_longer_fails(path: Path, tmp_path: Path) -> None:
    data = json.loads(path.read_text())
    if data["device"] == "cuda":
        pytest.importorskip("torch").cuda.is_available() or pytest.skip("a CUDA reproducer")
    records = campaign.run_batch(data.get("batch") or [data["program"]], tmp_path, data["device"], timeout=3000)
    record = records[data["program"]["seed"]]
    assert record["outcome"] not in campaign.FAILURES, (record["outcome"], record["detail"])


_PRECISION = """
import json, torch, artcache
{setup}
cache = artcache.Cache(strict=True)
f = torch.compile(lambda x: (x @ x).sin(), backend=cache.backend())
f(torch.randn(8, 8))
s = cache.stats()
print(json.dumps({{"hits": s.hits, "saves": s.saves}}))
"""


def test_setting_the_default_matmul_precision_still_hits(tmp_path: Path) -> None:
    """A process that sets ``torch.set_float32_matmul_precision("highest")`` (the default)
    computes exactly what one that never called it computes, and must find its entries."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store"}

    def run(setup: str, name: str) -> dict[str, Any]:
        proc = run_python(_PRECISION.format(setup=setup), env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / name)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    cold = run("", "cold")
    assert cold["saves"] == 1
    warm = run('torch.set_float32_matmul_precision("highest")', "warm")
    assert warm["hits"] == 1 and warm["saves"] == 0, warm


_CUSTOM_OP_AFTER_ANOTHER = """
import json, sys, torch
{setup}
import artcache
from tests.fuzz import custom_ops
cache = artcache.Cache(strict=True)
backend = cache.backend()
x = torch.linspace(-1, 1, 8)
{before}
f = torch.compile(lambda t: torch.ops.artcache_fuzz.scaled_tanh(t, 2.0) + 1, backend=backend)
try:
    out = f(x).tolist()
except Exception as exc:  # a tripwire: reported with the stats below
    out = f"{{type(exc).__name__}}: {{str(exc)[:200]}}"
s = cache.stats()
print(json.dumps({{"out": out, "hits": s.hits, "saves": s.saves, "misses": s.misses}}))
"""


def test_custom_op_graph_compiled_after_another_graph_hits_warm(tmp_path: Path) -> None:
    """The compiling process first compiles an unrelated graph (importing Inductor's
    lowering tables), then one with a custom op; a fresh process running only the
    custom-op graph, with tripwires on, must be served it."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store"}

    def run(name: str, setup: str, before: str) -> dict[str, Any]:
        code = _CUSTOM_OP_AFTER_ANOTHER.format(setup=setup, before=before)
        proc = run_python(code, env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / name)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    cold = run("cold", "", "torch.compile(lambda t: t.sin(), backend=backend)(x)")
    assert cold["saves"] == 2
    warm = run("warm", "from tests import _tripwire\n_tripwire.install()", "")
    assert warm["hits"] == 1 and warm["saves"] == 0 and warm["out"] == cold["out"], warm
