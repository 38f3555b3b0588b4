"""A compiled optimizer step (``torch.compile(opt.step)``) is cached, and its hit is proven
like the corpus: a fresh process with the compile tripwires installed hits and matches a
cold compile bitwise.

Dynamo gives the step's graph the optimizer's state tensors as attributes, which
AOTAutograd lifts to inputs read at every call: the entry must serve any values of that
state (a restart from a checkpoint), so the warm process trains from another seed and is
compared with a cold compile of that same seed.

``foreach=True`` is the implementation torch picks by default on CUDA: its graph's
``torch._foreach_*`` nodes carry lists of tensors in their metadata, which the key must
read like single tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_python

pytestmark = pytest.mark.slow

_STEP = """
import json, torch
{tripwire}
import artcache
cache = artcache.Cache(strict=True)
torch.manual_seed({seed})
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
opt = torch.optim.{optimizer}(model.parameters(), lr=0.01{options})
step = torch.compile(opt.step, backend=cache.backend())
x = torch.randn(8, 16)
for _ in range(3):
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    step()
s = cache.stats()
state = [v.tolist() for group in opt.state.values() for v in group.values() if torch.is_tensor(v)]
print(json.dumps({{"params": [p.tolist() for p in model.parameters()], "state": state,
                  "hits": s.hits, "misses": s.misses, "saves": s.saves, "uncacheable": s.uncacheable}}))
"""


def _step(tmp: Path, tag: str, store: str, *, seed: int, optimizer: str, warm: bool) -> dict[str, Any]:
    name, _, option = optimizer.partition("-")
    code = _STEP.format(seed=seed, optimizer=name, options=f", {option}=True" if option else "",
                        tripwire="from tests import _tripwire; _tripwire.install()" if warm else "")
    proc = run_python(code, env={"ARTCACHE_STORE": f"file://{tmp / store}",
                                 "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{tag}")})
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("optimizer", ["Adam", "SGD", "Adam-foreach", "SGD-foreach"])
def test_compiled_optimizer_step_hits_for_any_state(tmp_path: Path, optimizer: str) -> None:
    cold = _step(tmp_path, "cold", "store", seed=0, optimizer=optimizer, warm=False)
    assert cold["saves"] >= 1 and not cold["uncacheable"], cold
    warm = _step(tmp_path, "warm", "store", seed=1, optimizer=optimizer, warm=True)
    assert warm["hits"] >= 1 and warm["saves"] == 0 and warm["misses"] == {}, warm
    reference = _step(tmp_path, "reference", "fresh", seed=1, optimizer=optimizer, warm=False)
    assert reference["saves"] >= 1
    assert warm["params"] == reference["params"] and warm["state"] == reference["state"]
    assert warm["params"] != cold["params"], "another seed must train to other weights"
