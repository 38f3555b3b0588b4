"""A Hugging Face transformers model through the precompile tier, in fresh processes: GPT-2
(a small configuration, random weights, nothing downloaded) recorded cold, then replayed
warm with Dynamo's tracer tripwired, logits bitwise equal.  Its forward is decorated, reads
its configuration through ``__getattribute__``, dispatches attention through a class-level
registry and returns a ``ModelOutput`` dataclass: the library's constructs of
``tests/corpus/library_style.py``, in the library itself.  transformers is pinned in the
``dev`` extra (the version the GPU machine has)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .conftest import run_phase

pytest.importorskip("transformers")

PROGRAM = r'''
import json, sys, torch, artcache
from transformers import GPT2Config, GPT2LMHeadModel
phase, out_path = sys.argv[1], sys.argv[2]
if phase == "warm":
    from tests import _tripwire
    _tripwire.install(forbid_subprocess=False)
    _tripwire.arm_tracer(lambda: True)

torch.manual_seed(0)
config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, use_cache=False)
model = GPT2LMHeadModel(config).eval()
ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
pre = artcache.precompile(model, cache=artcache.Cache(strict=True))
outs = []
with torch.no_grad():
    for _ in range(2):
        outs.append(pre(ids).logits)
torch.save(outs, out_path)
print(json.dumps({"replayed": pre.replayed, "reasons": dict(pre.reasons)}))
'''


@pytest.mark.slow
def test_gpt2_inference_replays_without_tracing_bitwise(tmp_path: Path) -> None:
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    cold, warm = (run_phase(PROGRAM, phase, tmp_path, env) for phase in ("cold", "warm"))
    assert cold["info"] == {"replayed": 0, "reasons": {"absent": 1}}, cold["info"]
    assert warm["info"] == {"replayed": 2, "reasons": {}}, warm["info"]
    assert all(torch.equal(a, b) for a, b in zip(cold["results"], warm["results"], strict=True))
