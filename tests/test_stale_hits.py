"""Never a stale hit: a condition that changes the compiled program changes the key.

Each case compiles cold in one fresh process, then runs a second fresh process that changes
one condition (a run-time setting, or the source of user code the trace ran) against the
same store.  The second process must miss (so what it runs is a fresh compile under its own
conditions) and agree with eager; before these factors were in the key it was served the
first process's program (wrong sums, wrong gradients, a segfault).

Programs are written to files, not passed with ``-c``: custom-op code must have a source
file for the key to identify it, as in any real program.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_python

pytestmark = pytest.mark.slow

_HARNESS = """
import json, sys, torch
import artcache
{setup}
cache = artcache.Cache(strict=True)
backend = cache.backend()
{program}
s = cache.stats()
print(json.dumps({{"result": RESULT, "eager": EAGER, "hits": s.hits, "misses": s.misses, "saves": s.saves,
                  "uncacheable": s.uncacheable}}))
"""


def _run(tmp: Path, name: str, program: str, *, setup: str = "", store: Path | None = None) -> dict[str, Any]:
    """Run ``program`` in a fresh process against ``store`` (default: ``tmp/store``);
    it must set RESULT (compiled) and EAGER (the same without compiling), as plain data.  Returns RESULT and the cache's stats."""
    script = tmp / f"{name}.py"
    script.write_text(_HARNESS.format(setup=textwrap.dedent(setup), program=textwrap.dedent(program)))
    env = {"ARTCACHE_STORE": f"file://{store or tmp / 'store'}", "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{name}")}
    proc = run_python(f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))", env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _cold_then_changed(tmp: Path, program: str, cold_setup: str, warm_setup: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cold under ``cold_setup``, then warm under ``warm_setup`` on the same store."""
    cold = _run(tmp, "cold", program, setup=cold_setup)
    warm = _run(tmp, "warm", program, setup=warm_setup)
    assert cold["saves"] >= 1 and not cold["uncacheable"], cold
    return cold, warm


_SUM = """
f = torch.compile(lambda x: x.sum(), backend=backend)
RESULT = f(torch.ones(2 ** 20)).item()
EAGER = torch.ones(2 ** 20).sum().item()
"""


def test_cpu_thread_count_is_in_the_key(tmp_path: Path) -> None:
    """Inductor's C++ reduction sizes its per-thread buffers for the compile-time thread count."""
    cold, warm = _cold_then_changed(tmp_path, _SUM, "torch.set_num_threads(2)", "torch.set_num_threads(3)")
    assert cold["result"] == 2 ** 20
    assert warm["hits"] == 0 and warm["saves"] == 1, warm
    assert warm["result"] == warm["eager"] == 2 ** 20


_EMPTY = """
f = torch.compile(lambda x: torch.empty(8) + x, backend=backend)
out = f(torch.zeros(8))
RESULT = bool(torch.isnan(out).all())
EAGER = bool(torch.isnan(torch.empty(8) + torch.zeros(8)).all())
"""


def test_fill_uninitialized_memory_is_in_the_key(tmp_path: Path) -> None:
    """Under deterministic algorithms the NaN fill of ``empty`` is baked into the kernel."""
    base = "torch.use_deterministic_algorithms(True)\n"
    _, warm = _cold_then_changed(
        tmp_path, _EMPTY, base + "torch.utils.deterministic.fill_uninitialized_memory = False",
        base + "torch.utils.deterministic.fill_uninitialized_memory = True",
    )
    assert warm["hits"] == 0 and warm["saves"] == 1, warm
    assert warm["eager"] and warm["result"], "with the fill on, empty() is all NaN"


def test_mixed_precision_api_does_not_lose_the_compile(tmp_path: Path) -> None:
    """``torch.get_float32_matmul_precision()`` raises once the per-backend API was used;
    the compile must go on (and the setting is in the key)."""
    program = """
    f = torch.compile(lambda a, b: (a @ b).relu(), backend=backend)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    RESULT = f(a, b).sum().item()
    EAGER = (a @ b).relu().sum().item()
    """
    _, warm = _cold_then_changed(
        tmp_path, program, "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
        "torch.backends.mkldnn.matmul.fp32_precision = 'ieee'",
    )
    assert warm["hits"] == 0 and warm["saves"] == 1, warm


# One custom op; each piece of user code the trace runs is a separate knob.  The forward
# multiplies by 2 (so a graph differs from plain mul), the backward by BACKWARD, the fake
# kernel is plain, and an Inductor decomposition may rewrite the op.
_CUSTOM_OP = """
import torch._inductor.decomposition as inductor_decomp

SCALE = {scale}

@torch.library.custom_op("stalehits::scaled", mutates_args=())
def scaled(x: torch.Tensor) -> torch.Tensor:
    return x * 2

@scaled.register_fake
def _(x):
    return torch.empty_like(x)

def setup_context(ctx, inputs, output):
    ctx.factor = {ctx_factor}

def backward(ctx, grad):
    return grad * {backward} * ctx.factor * SCALE

scaled.register_autograd(backward, setup_context=setup_context)

@inductor_decomp.register_decomposition(torch.ops.stalehits.scaled.default)
def _decomp(x):
    return x * {decomp}

def fn(x):
    return scaled(x).sin()

def run(f):
    x = torch.linspace(-1, 1, 8, requires_grad=True)
    out = f(x)
    out.sum().backward()
    return [out.tolist(), x.grad.tolist()]

RESULT = run(torch.compile(fn, backend=backend))
EAGER = None  # the decomposition defines what the compiled op computes; eager runs the kernel
"""
_CUSTOM_BASE = {"scale": 1, "ctx_factor": 1, "backward": 2, "decomp": 2}


@pytest.fixture(scope="module")
def custom_op_cold(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("custom-op")
    cold = _run(tmp, "cold", _CUSTOM_OP.format(**_CUSTOM_BASE))
    assert cold["saves"] >= 1 and not cold["uncacheable"], cold
    return tmp, cold


@pytest.mark.parametrize("knob,value", [("backward", 6), ("ctx_factor", 3), ("decomp", 3.8), ("scale", 3)])
def test_custom_op_code_is_in_the_key(custom_op_cold: tuple[Path, dict[str, Any]], knob: str, value: Any) -> None:
    """Edited autograd formula, setup_context, Inductor decomposition, or a module-level
    value the backward reads: the second process must compile anew (a miss), and what it
    computes differs from the first program, which a hit would have returned."""
    tmp, cold = custom_op_cold
    store = tmp / f"store-{knob}"
    shutil.copytree(tmp / "store", store)
    warm = _run(tmp, f"warm-{knob}", _CUSTOM_OP.format(**{**_CUSTOM_BASE, knob: value}), store=store)
    assert warm["hits"] == 0 and warm["saves"] >= 1, warm
    assert warm["result"] != cold["result"], "the edit must change what the program computes"


def test_unchanged_custom_op_hits(custom_op_cold: tuple[Path, dict[str, Any]]) -> None:
    """The converse: the same custom-op program in a fresh process hits."""
    tmp, cold = custom_op_cold
    store = tmp / "store-same"
    shutil.copytree(tmp / "store", store)
    warm = _run(tmp, "warm-same", _CUSTOM_OP.format(**_CUSTOM_BASE), store=store)
    assert warm["hits"] == cold["saves"] and warm["saves"] == 0, (cold, warm)
    assert warm["result"] == cold["result"]
