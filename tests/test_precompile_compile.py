"""The precompile tier behind ``torch.compile`` (``artcache.frame_hook``), proven in fresh
processes: ``torch.compile(fn, backend="artcache", options={"precompile": True})``, a module
compiled with ``ARTCACHE_PRECOMPILE=1``, and a ``Cache.backend(options={"precompile": True})``
backend.  A cold process fills a store; a warm process, with the compiler's tripwires and a
tripwire on Dynamo's bytecode tracer armed, must give bitwise the cold outputs; a process
calling with other shapes and dtypes falls back (Dynamo traces) and must equal a fresh
Inductor compile bitwise, while the recorded shapes still replay without tracing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import run_cli, run_phase

PROGRAM = r'''
import json, sys, torch, artcache
phase, out = sys.argv[1], sys.argv[2]
armed = [phase != "cold"]
if phase != "cold":
    from tests import _tripwire
    if phase == "warm":
        _tripwire.install()
    _tripwire.arm_tracer(lambda: armed[0])

class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).softmax(-1)

def make(scale):
    def fn(x, w, *, bias=1.0):  # a closure: scale is a free variable
        return torch.tanh(x @ w) * scale + bias
    return fn

def other(x, y):
    return (x.sin() * y).sum(0), x.cos()

torch.manual_seed(0)
model, fn = MLP(), make(torch.tensor(0.25))
calls = []
# A hook runs in the module's __call__, outside the frame served (Dynamo would trace it as a
# frame of its own: disabled here so that the tracer's tripwire watches the forward frame).
model.register_forward_hook(torch.compiler.disable(lambda m, i, o: calls.append(o.shape)))
compiled = {
    "fn": torch.compile(fn, backend="artcache", options={"precompile": True}),
    "module": torch.compile(model, backend="artcache"),  # ARTCACHE_PRECOMPILE=1
    "other": torch.compile(other, backend=artcache.Cache().backend(options={"precompile": True})),
}
x, w, y = torch.randn(5, 8), torch.randn(8, 6), torch.randn(5, 8)
args = {"fn": lambda x, w, y: (x, w), "module": lambda x, w, y: (x,), "other": lambda x, w, y: (x, y)}
results = {}
for name, c in compiled.items():
    with torch.no_grad():
        first = c(*args[name](x, w, y))
        results[name] = [first, c(*args[name](x, w, y))]
# A training step through a torch module (torch's wrapper frame): outputs and gradients.
torch.manual_seed(1)
seq = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
train = torch.compile(seq, backend="artcache", options={"precompile": True})
steps = []
for _ in range(2):
    loss = train(x).square().mean()
    loss.backward()
    steps += [loss.detach(), *(p.grad.clone() for p in seq.parameters())]
    seq.zero_grad()
results["train"] = steps
if phase == "changed":
    eager = {"fn": fn, "module": model, "other": other}
    for name, c in compiled.items():
        for dtype, rows in ((torch.float32, 7), (torch.float64, 5)):
            x2, w2, y2 = (torch.randn(rows, 8, dtype=dtype), torch.randn(8, 6, dtype=dtype),
                          torch.randn(rows, 8, dtype=dtype))
            a2 = args[name](x2, w2, y2)
            m = model.to(dtype)
            armed[0] = False
            with torch.no_grad():
                got = c(*a2)
                want = torch.compile(eager[name], backend="inductor")(*a2)
            m.float()
            results[f"{name}-{dtype}-{rows}"] = [got, want]
        armed[0] = True  # the recorded shape still replays after the fallbacks
        with torch.no_grad():
            results[f"{name}-again"] = [c(*args[name](x, w, y)), results[name][0]]
        armed[0] = False
    with torch.no_grad():  # one tensor twice: the checks hold, the inputs alias: through Dynamo
        x3 = x.clone()
        results["other-aliased"] = [compiled["other"](x3, x3), torch.compile(other, backend="inductor")(x3, x3)]
torch.save(results, out)
from artcache import frame_hook
hooks = [[h._code_fn.__name__, h.replayed, h.trees, dict(h.reasons)] for h in frame_hook.attached()]
print(json.dumps({"hook_calls": len(calls), "hooks": hooks}))
'''


def _run(phase: str, tmp: Path, store: str) -> dict[str, object]:
    env = {"ARTCACHE_STORE": store, "ARTCACHE_PRECOMPILE": "1", "ARTCACHE_STRICT": "1"}
    return run_phase(PROGRAM, phase, tmp, env, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("precompile-compile")
    store = f"file://{tmp}/store"
    cold = _run("cold", tmp, store)
    return {"cold": cold, "warm": _run("warm", tmp, store), "changed": _run("changed", tmp, store), "store": store}


def _flat(value: object) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]  # type: ignore[list-item]


def _equal(a: object, b: object) -> bool:
    fa, fb = _flat(a), _flat(b)
    return len(fa) == len(fb) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(fa, fb))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fn", "module", "other", "train"])
def test_warm_replays_without_tracing_bitwise(runs: dict[str, dict[str, object]], name: str) -> None:
    """The warm process ran with the tracer's and the compiler's tripwires armed (a trace or
    a compile would have failed it) and returned the cold process's outputs bitwise."""
    cold, warm = runs["cold"]["results"], runs["warm"]["results"]
    for c, w in zip(cold[name], warm[name], strict=True):  # type: ignore[index]
        assert _equal(c, w), name


@pytest.mark.slow
def test_module_hooks_still_run(runs: dict[str, dict[str, object]]) -> None:
    assert runs["warm"]["info"]["hook_calls"] == 2  # type: ignore[index]


@pytest.mark.slow
def test_second_call_goes_through_torchs_guard_tree(runs: dict[str, dict[str, object]]) -> None:
    """Each warm frame was served twice, the second time after torch's C++ guards (built
    from the entry's checks at the first) held; nothing fell back."""
    hooks = runs["warm"]["info"]["hooks"]  # type: ignore[index]
    assert sorted(h[0] for h in hooks) == ["fn", "forward", "forward", "other"], hooks
    for name, replayed, trees, reasons in hooks:
        assert (replayed, trees, reasons) == (2, 1, {}), (name, hooks)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fn", "module", "other"])
def test_changed_shape_and_dtype_fall_back_bitwise(runs: dict[str, dict[str, object]], name: str) -> None:
    results = runs["changed"]["results"]
    keys = [f"{name}-torch.float32-7", f"{name}-torch.float64-5", f"{name}-again"]
    for key in keys + (["other-aliased"] if name == "other" else []):
        got, want = results[key]  # type: ignore[index]
        assert _equal(got, want), key


@pytest.mark.slow
def test_cold_saved_frame_entries(runs: dict[str, str]) -> None:
    proc = run_cli("ls", "--format", "json", env={"ARTCACHE_STORE": runs["store"]})
    assert proc.returncode == 0, proc.stderr
    titles = {e["title"] for e in json.loads(proc.stdout)["entries"] if e["title"].startswith("precompiled frame")}
    assert {"precompiled frame __main__.make.<locals>.fn", "precompiled frame __main__.MLP.forward",
            "precompiled frame __main__.other", "precompiled frame torch.nn.modules.container.Sequential.forward",
            } <= titles, titles


GUARD_BUILDS = r'''
import json, sys, torch, artcache
from torch._dynamo.guards import CheckFunctionManager
phase, out = sys.argv[1], sys.argv[2]
builds = []
build_guards = CheckFunctionManager.build_guards

def counted(self, *args, **kwargs):  # torch's own, counted
    builds.append(1)
    return build_guards(self, *args, **kwargs)

CheckFunctionManager.build_guards = counted

class Flagged(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.flag = True

    def forward(self, x):
        return self.fc(x).relu() if self.flag else self.fc(x).tanh()

torch.manual_seed(0)
model = Flagged()
model.flag = phase != "flipped"  # recorded with True: the frame entry's guard on it fails
compiled = torch.compile(model, backend=artcache.Cache().backend(options={"precompile": True}))
x = torch.randn(3, 8)
with torch.no_grad():
    got = compiled(x)
    want = model(x)
torch.save([got, want], out)
from artcache import frame_hook
hook, = frame_hook.attached()
print(json.dumps({"builds": len(builds), "replayed": hook.replayed, "reasons": dict(hook.reasons)}))
'''


@pytest.mark.slow
def test_a_fallback_that_records_nothing_builds_its_guards_once(tmp_path: Path) -> None:
    """torch builds a frame's guards twice when a guard filter is set; the recorder's filter
    is set only while it records.  The cold process records (two builds, the frame entry
    saved); a process whose frame entry's guard fails compiles through Dynamo without
    recording: one build, and the result of the flipped flag's branch."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    cold = run_phase(GUARD_BUILDS, "cold", tmp_path, env, weights_only=True)
    assert cold["info"] == {"builds": 2, "replayed": 0, "reasons": {"absent": 1}}, cold["info"]
    flipped = run_phase(GUARD_BUILDS, "flipped", tmp_path, env, weights_only=True)
    assert flipped["info"] == {"builds": 1, "replayed": 0, "reasons": {"guards": 1}}, flipped["info"]
    got, want = flipped["results"]
    torch.testing.assert_close(got, want)
    warm = run_phase(GUARD_BUILDS, "warm", tmp_path, env, weights_only=True)
    assert warm["info"] == {"builds": 0, "replayed": 1, "reasons": {}}, warm["info"]
    assert torch.equal(warm["results"][0], cold["results"][0])
