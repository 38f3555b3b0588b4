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
from tests import _tripwire
phase, out_path = sys.argv[1], sys.argv[2]
_tripwire.armed_in(phase)

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


UPGRADED = r'''
import json, sys, torch, artcache, transformers
from transformers.activations import NewGELUActivation
phase, out_path = sys.argv[1], sys.argv[2]
if phase == "upgraded":
    transformers.__version__ += ".post1"  # what an upgrade changes, as far as a version goes

class Head(torch.nn.Module):  # the user's own module, calling a library's module
    def __init__(self):
        super().__init__()
        self.lin, self.act = torch.nn.Linear(8, 8), NewGELUActivation()

    def forward(self, x):
        return self.act(self.lin(x))

torch.manual_seed(0)
m, x = Head(), torch.randn(2, 8)
pre = artcache.precompile(m, cache=artcache.Cache())
outs = [pre(x)]
torch.save(outs, out_path)
print(json.dumps({"replayed": pre.replayed, "reasons": dict(pre.reasons)}))
'''


@pytest.mark.slow
def test_an_entry_that_inlined_a_package_is_refused_after_its_upgrade(tmp_path: Path) -> None:
    """A user's frame that calls into an installed package (not torch, not the standard
    library) records that package's version; a process with another version refuses the
    entry (Dynamo traces again) and one with the same version replays it."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store"}
    cold = run_phase(UPGRADED, "cold", tmp_path, env)
    assert cold["info"] == {"replayed": 0, "reasons": {"absent": 1}}, cold["info"]
    upgraded = run_phase(UPGRADED, "upgraded", tmp_path, env)
    assert upgraded["info"] == {"replayed": 0, "reasons": {"traced-code": 1}}, upgraded["info"]
    same = run_phase(UPGRADED, "warm", tmp_path, env)
    assert same["info"] == {"replayed": 1, "reasons": {}}, same["info"]
    assert all(torch.equal(a, b) for a, b in zip(cold["results"], same["results"], strict=True))


TRAIN = r'''
import json, sys, torch, artcache
from transformers import GPT2Config, GPT2LMHeadModel
from artcache import frame_hook
from tests import _tripwire
phase, out_path = sys.argv[1], sys.argv[2]
armed = _tripwire.armed_in(phase)

torch.manual_seed(0)
config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, use_cache=False)
model = GPT2LMHeadModel(config).train()  # dropout on: compiled RNG, seeded per step
ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
compiled = torch.compile(model, backend="artcache", options={"precompile": True})
outs = []
for _ in range(2):
    torch.manual_seed(5)
    loss = compiled(ids, labels=ids).loss
    loss.backward()
    outs.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
(hook,) = frame_hook.attached()
info = {"replayed": hook.replayed, "called": getattr(hook, "called_replayed", 0), "reasons": dict(hook.reasons),
        "refusals": hook.refusals}
if phase == "warm":
    # The wrapper has no Dynamo context to run called frames under: it refuses the entry
    # and Dynamo traces (the tracer disarmed for it; the graphs hit, nothing compiles).
    armed[0] = False
    pre = artcache.precompile(model, cache=artcache.Cache(strict=True))
    torch.manual_seed(5)
    loss = pre(ids, labels=ids).loss
    info["wrapper"] = {"replayed": pre.replayed, "reasons": dict(pre.reasons),
                       "same": bool(torch.equal(loss.detach(), outs[0][0]))}
torch.save(outs, out_path)
print(json.dumps(info))
'''


@pytest.mark.slow
def test_gpt2_training_replays_its_called_frames_without_tracing_bitwise(tmp_path: Path) -> None:
    """GPT-2's training step is not one frame for Dynamo: the decorator's wrapper calls
    ``forward`` at a graph break, ``forward`` goes on in plain Python after a break Dynamo
    cannot resume from (a logger call inside the ``loss_function`` property), and the loss
    function, the property and the output dataclass's ``__init__`` are frames of their own.
    The entry holds them all (called frames, resume functions left as they are); a warm
    process replays every one with Dynamo's tracer and every compiler tripwired, and its
    loss and gradients are bitwise the cold process's."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    cold, warm = (run_phase(TRAIN, phase, tmp_path, env) for phase in ("cold", "warm"))
    assert cold["info"]["reasons"] == {"absent": 1} and not cold["info"]["refusals"], cold["info"]
    wrapper = warm["info"].pop("wrapper")
    assert warm["info"] == {"replayed": 2, "called": 8, "reasons": {}, "refusals": {}}, warm["info"]
    assert wrapper == {"replayed": 0, "reasons": {"called-frames": 1}, "same": True}, wrapper
    for a, b in zip(cold["results"], warm["results"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
