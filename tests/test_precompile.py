"""The precompile tier (``artcache.precompile``), proven in fresh processes.

A cold process runs corpus programs through ``artcache.precompile`` with a signing key; a
warm process, trusting only that key, runs them again with the compiler's tripwires and a
tripwire on Dynamo's bytecode tracer (``InstructionTranslator.run``) armed for every
program expected to replay.  Warm must equal cold bitwise (outputs, gradients, inputs
after mutation, buffers).  Programs that cannot skip Dynamo are named with their reason,
and their warm run (Dynamo traces, the graphs hit) must be equal too.
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

from .conftest import REPO, keypair_envs, run_cli, run_python

# Programs that replay without Dynamo in the warm process.
# dynamic_pointwise: marked dynamic, replayed at both sizes (its shape guards hold for both);
# batchnorm_train: num_batches_tracked's .item() is a symbol no guard or graph input uses.
REPLAYED = ("mlp_infer", "mlp_train", "linear_relu_train", "conv2d_train", "batchnorm_eval", "attention_train",
            "mutate_input", "alias_outputs", "rng_ops", "dropout_train", "dtype_mix", "views_train",
            "graph_break", "graph_break_train",  # two graphs and a resume function: a chain
            "dynamic_pointwise", "batchnorm_train")
# Programs that cannot, with the reason the cold run names (``precompile-<reason>``): none
# of the corpus today (tests/test_precompile_breaks.py and test_precompile_dynamic.py name
# the constructs that still fall back, with their reasons).
FALLBACK: dict[str, str] = {
}


def _run(phase: str, out: Path, env: dict[str, str], names: list[str], extra: list[str]) -> dict[str, Any]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.corpus.runner", "--phase", phase, "--out", str(out),
         "--programs", ",".join(names), *extra],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=True)  # our own result file, written by the test


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("precompile")
    store = f"file://{tmp}/store"
    writer, reader = keypair_envs(tmp, store)
    names = [*REPLAYED, *FALLBACK]
    cold = _run("cold", tmp / "cold.pt", {**writer, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "ind-cold")}, names,
                ["--precompile"])
    warm = _run("warm", tmp / "warm.pt", {**reader, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "ind-warm")}, names,
                ["--precompile", "--may-trace", ",".join(FALLBACK)])
    return {"cold": cold, "warm": warm, "store": store, "tmp": tmp}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.slow
@pytest.mark.parametrize("name", [*REPLAYED, *FALLBACK])
def test_warm_equals_cold_bitwise(runs: dict[str, Any], name: str) -> None:
    cold, warm = runs["cold"]["results"][name], runs["warm"]["results"][name]
    for kind in ("outputs", "grads", "inputs_after", "buffers"):
        assert len(cold[kind]) == len(warm[kind]), kind
        for i, (c, w) in enumerate(zip(cold[kind], warm[kind])):
            assert _same(c, w), f"{kind}[{i}]: warm differs from cold"


@pytest.mark.slow
@pytest.mark.parametrize("name", REPLAYED)
def test_warm_replays_without_dynamo(runs: dict[str, Any], name: str) -> None:
    """Every call was a replay (the tracer's tripwire was armed: a trace would have failed
    the warm process), and the cold run recorded the frame."""
    cold = json.loads(runs["cold"]["stats"])["frames"][name]
    warm = json.loads(runs["warm"]["stats"])["frames"][name]
    assert not any(r.startswith("not-precompilable") for r in cold["reasons"]), cold
    assert warm["replayed"] >= 1 and warm["reasons"] == {}, warm


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_fallback_names_its_reason(runs: dict[str, Any], name: str) -> None:
    cold = json.loads(runs["cold"]["stats"])["frames"][name]
    warm = json.loads(runs["warm"]["stats"])["frames"][name]
    assert cold["reasons"].get(f"not-precompilable:{FALLBACK[name]}"), cold
    assert warm["replayed"] == 0, warm


@pytest.mark.slow
def test_warm_process_signed_and_compiled_nothing(runs: dict[str, Any]) -> None:
    cold, warm = json.loads(runs["cold"]["stats"]), json.loads(runs["warm"]["stats"])
    assert cold["errors"] == {} and warm["errors"] == {}
    assert warm["saves"] == 0 and warm["compiler_imported"] == {}, warm
    assert set(warm["misses"]) <= {"absent"}, warm["misses"]  # fallback frames have no entry
    assert warm["misses"].get("absent", 0) == len(FALLBACK)  # dynamic_pointwise: one frame key for both sizes


@pytest.mark.slow
def test_inspect_shows_a_frame_entry(runs: dict[str, Any]) -> None:
    proc = run_cli("ls", "--format", "json", env={"ARTCACHE_STORE": runs["store"]})
    assert proc.returncode == 0, proc.stderr
    frames = [e for e in json.loads(proc.stdout)["entries"] if e["title"].startswith("precompiled frame")]
    assert frames, proc.stdout[:2000]
    shown = run_cli("inspect", frames[0]["key"], env={"ARTCACHE_STORE": runs["store"]})
    assert shown.returncode == 0, shown.stderr
    assert "precompiled frame" in shown.stdout and "guards" in shown.stdout and "graph_entry" in shown.stdout


@pytest.mark.slow
def test_changed_constant_fails_a_guard_and_falls_back_correctly(runs: dict[str, Any]) -> None:
    """A module attribute the frame read (a guarded constant: ReLU's ``inplace``) changes in a fresh process:
    the frame entry is refused before anything runs, Dynamo traces, and the output is the
    new program's."""
    code = (
        "import json, torch, artcache\n"
        "from tests.corpus.programs import PROGRAMS\n"
        "fn, inputs = PROGRAMS['linear_relu_train'].build()\n"
        "fn[1].inplace = True\n"
        "cache = artcache.Cache(strict=True)\n"
        "out = artcache.precompile(fn, cache=cache)(*inputs)\n"
        "torch.testing.assert_close(out, fn(*inputs), atol=1e-5, rtol=1e-4)\n"
        "pc = cache.stats()\n"
        "print(json.dumps({'misses': pc.misses}))\n"
    )
    env = {"ARTCACHE_STORE": runs["store"], "TORCHINDUCTOR_CACHE_DIR": str(runs["tmp"] / "ind-guard")}
    proc = run_python(code, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["misses"].get("guards") == 1


def test_tracer_tripwire_catches_a_trace(tmp_path: Path) -> None:
    """The warm check can fail: the armed tracer tripwire stops Dynamo on any frame."""
    proc = run_python(
        "from tests import _tripwire\n"
        "_tripwire.arm_tracer(lambda: True)\n"
        "import torch\n"
        "torch.compile(lambda x: x.sin() + 1, backend='eager')(torch.randn(3))\n",
        env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")},
    )
    assert proc.returncode != 0 and "tripwire" in proc.stderr


@pytest.mark.parametrize("doc", [
    None, [], {"schema": 1},
    {"schema": 1, "guards": [["eval", [["L", "x"]], "1"]], "state": "", "inputs": [], "output": ["c", 1],
     "graph_key": "0" * 64, "cpu_code": True, "traced": [], "wrapped": False, "storage": []},
    {"schema": 1, "guards": [], "state": "", "inputs": [[["X", "os"]]], "output": ["c", 1],
     "graph_key": "0" * 64, "cpu_code": True, "traced": [], "wrapped": False, "storage": []},
    {"schema": 1, "guards": [], "state": "", "inputs": [], "output": ["call", "os.system"],
     "graph_key": "0" * 64, "cpu_code": True, "traced": [], "wrapped": False, "storage": []},
    {"schema": 1, "guards": [], "state": "", "inputs": [], "output": ["c", 1],
     "graph_key": "../../etc", "cpu_code": True, "traced": [], "wrapped": False, "storage": []},
    # a type step carries no key; a code check carries a digest
    {"schema": 1, "guards": [["type", [["L", "x"], ["t", "__class__"]], ["builtins", "int"]]], "state": "",
     "inputs": [], "output": ["c", 1], "graph_key": "0" * 64, "cpu_code": True, "traced": [], "wrapped": False,
     "storage": []},
    {"schema": 1, "guards": [["eq", [["L", "c"], ["g", 3]], ["int", 1]]], "state": "",
     "inputs": [], "output": ["c", 1], "graph_key": "0" * 64, "cpu_code": True, "traced": [], "wrapped": False,
     "storage": []},
    {"schema": 1, "guards": [["code", [["L", "f"], ["a", "__code__"]], "os.system"]], "state": "",
     "inputs": [], "output": ["c", 1], "graph_key": "0" * 64, "cpu_code": True, "traced": [], "wrapped": False,
     "storage": []},
], ids=["none", "list", "schema-only", "eval-check", "unknown-root", "call-output", "path-key", "type-step-key",
        "generic-step-not-a-name", "code-not-digest"])
def test_malformed_frame_entries_are_refused(doc: Any) -> None:
    from artcache.errors import CorruptEntryError
    from artcache.frames import FrameEntry

    with pytest.raises(CorruptEntryError):
        FrameEntry.from_plain(doc)


def test_well_formed_frame_entry_round_trips() -> None:
    from artcache import pickler
    from artcache.frames import FrameEntry

    entry = FrameEntry([["eq", [["L", "k"]], ["int", 3]], ["same", [["M", "torch"]], [["G", "torch"]]],
                        ["code", [["L", "m"], ["t", ""], ["a", "__dict__"], ["i", "f"], ["a", "__code__"]], "b" * 64],
                        ["eq", [["L", "m"], ["a", "config"], ["g", "use_cache"]], ["bool", False]]],
                       "{}",
                       [[["L", "x"]]], ["tuple", [["o", 0], ["in", 0], ["c", None]]], "a" * 64, True,
                       [["m", "f", "d"]], False, [0])
    doc = pickler.loads(pickler.dumps(entry.plain()).data, {})
    assert FrameEntry.from_plain(doc) == entry


@pytest.mark.slow
def test_inputs_that_alias_differently_are_refused(runs: dict[str, Any]) -> None:
    """mutate_input was recorded with two distinct tensors; called with one tensor twice,
    the entry is refused (its graph assumed no aliasing) and Dynamo's path computes the
    aliased program, equal to eager."""
    code = (
        "import json, torch, artcache\n"
        "from tests.corpus.programs import PROGRAMS\n"
        "fn, (x, y) = PROGRAMS['mutate_input'].build()\n"
        "a, b = x.clone(), x.clone()\n"
        "cache = artcache.Cache(strict=True)\n"
        "out = artcache.precompile(fn, cache=cache)(a, a)\n"
        "expected = fn(b, b)\n"
        "torch.testing.assert_close(out, expected)\n"
        "torch.testing.assert_close(a, b)\n"
        "print(json.dumps({'misses': cache.stats().misses}))\n"
    )
    env = {"ARTCACHE_STORE": runs["store"], "TORCHINDUCTOR_CACHE_DIR": str(runs["tmp"] / "ind-alias")}
    proc = run_python(code, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["misses"].get("guards") == 1


@pytest.mark.slow
def test_precompile_option_without_torchs_hook_compiles_and_says_why(tmp_path: Path) -> None:
    """``torch.compile(..., backend="artcache", options={"precompile": True})`` on a torch
    without the precompile-entry hook (removed here before artcache is imported): nothing is
    patched, the option does not reach Inductor's config (an unknown key) nor fails the
    compile, Dynamo traces, and one warning says why."""
    proc = run_python(
        "import torch, torch._C._dynamo.eval_frame as ef\n"
        "del ef._load_precompile_entry\n"
        "x = torch.randn(3, generator=torch.Generator().manual_seed(0))\n"
        "out = torch.compile(lambda x: x.sin() + 1, backend='artcache', options={'precompile': True})(x)\n"
        # Compiled and eager sin may differ in the last bit: an absolute tolerance, since
        # sin(x) + 1 can be near zero, where a relative one alone would fail.
        "torch.testing.assert_close(out, x.sin() + 1, atol=1e-6, rtol=1e-5)\n"
        "assert not getattr(torch._dynamo.optimize, '_artcache_precompile_patch', False)\n",
        env={"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precompile-entry hook" in proc.stderr


def test_frozen_frame_is_not_precompiled_and_new_weights_are_computed(tmp_path: Path) -> None:
    """Under ``freezing=True`` the graph compiles the weights' values in, and a replay would
    skip the backend's weights check: the frame is never precompiled.  Dynamo itself guards
    the parameters by identity under freezing (refused as ``guard ID_MATCH``, a guard no
    fresh process can evaluate); the ``frozen_weights`` graph factor refuses it as well
    (``graph-frozen_weights``).  A second process with other weights computes with its own."""
    code = (
        "import json, sys, torch, artcache\n"
        "import torch._inductor.config as ic\n"
        "from tests.corpus.programs import PROGRAMS\n"
        "fn, args = PROGRAMS['mlp_infer'].build()\n"
        "torch.manual_seed(int(sys.argv[1]))\n"
        "with torch.no_grad():\n"
        "    for p in fn.parameters():\n"
        "        p.copy_(torch.randn_like(p))\n"
        "cache = artcache.Cache(strict=True)\n"
        "with ic.patch(freezing=True), torch.no_grad():\n"
        "    pre = artcache.precompile(fn, cache=cache)\n"
        "    out = pre(*args)\n"
        "    expected = fn(*args)\n"
        "torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)\n"
        "print(json.dumps({'reasons': dict(pre.reasons)}))\n"
    )
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    for seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", code, seed], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, **env, "PYTHONPATH": str(REPO)}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        reasons = json.loads(proc.stdout.strip().splitlines()[-1])["reasons"]
        assert {"not-precompilable:guard ID_MATCH", "not-precompilable:graph-frozen_weights"} & set(reasons), reasons


def _last_line(program: str, env: dict[str, str], inductor_dir: Path) -> dict[str, Any]:
    """The JSON line ``program`` printed last, run in a fresh process with its own Inductor dir."""
    proc = run_python(program, env={**env, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


_OPTIONAL_ATTRIBUTE = """
import json, sys, torch, artcache
class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
    def forward(self, x):
        scale = getattr(self, "scale", None)  # Dynamo guards the attribute's absence
        y = self.lin(x)
        return y * 2 if scale is None else y * 3
torch.manual_seed(0)
m = Scaled()
if {set_scale}:
    m.scale = 1.0
x = torch.randn(2, 4)
pre = artcache.precompile(m, cache=artcache.Cache(strict=True))
with torch.no_grad():
    out, ref = pre(x), m(x)
print(json.dumps({{"same": bool(torch.equal(out, ref)), "replayed": pre.replayed, "reasons": dict(pre.reasons)}}))
"""


def test_an_attribute_guarded_absent_and_then_present_falls_back(tmp_path: Path) -> None:
    """A frame that read an optional attribute the module lacked is never replayed for a
    module that has it (Dynamo's HASATTR guard held the other way round), and still is for
    one that lacks it.  (torch 2.11 guards the absence in another form, the attribute's own
    source: the same check there, run on the GPU machine.)"""
    env = {"ARTCACHE_STORE": f"file://{tmp_path / 'store'}"}

    def run(tag: str, set_scale: bool) -> dict[str, Any]:
        return _last_line(_OPTIONAL_ATTRIBUTE.format(set_scale=set_scale), env, tmp_path / f"ind-{tag}")

    cold = run("cold", False)
    assert cold["same"] and cold["replayed"] == 0
    present = run("present", True)
    assert present["same"], "a replay computed the module without its attribute"
    refused = [r for r in cold["reasons"] if r.startswith("not-precompilable")]
    assert not refused, cold
    assert present["replayed"] == 0 and present["reasons"].get("guards") == 1, present
    absent = run("absent", False)
    assert absent["same"] and absent["replayed"] == 1, absent


_KWARGS = """
import json, sys, torch, artcache
class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
    def forward(self, x, **kwargs):
        y = self.lin(x)  # Dynamo guards whether kwargs holds "scale" (a dict-key guard)
        return y * kwargs["scale"] if "scale" in kwargs else y * 2
torch.manual_seed(0)
m = Scaled()
x = torch.randn(2, 4)
kwargs = {kwargs}
pre = artcache.precompile(m, cache=artcache.Cache(strict=True))
with torch.no_grad():
    out, ref = pre(x, **kwargs), m(x, **kwargs)
print(json.dumps({{"same": bool(torch.equal(out, ref)), "replayed": pre.replayed, "reasons": dict(pre.reasons)}}))
"""


def test_a_kwargs_key_guarded_absent_and_then_present_falls_back(tmp_path: Path) -> None:
    """A frame that read ``**kwargs`` without a key (Dynamo's dict-key guard) replays for a
    call without it, and never for a call that passes it: that call goes through Dynamo
    and gets the program's result."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path / 'store'}"}

    def run(tag: str, kwargs: str) -> dict[str, Any]:
        return _last_line(_KWARGS.format(kwargs=kwargs), env, tmp_path / f"ind-{tag}")

    cold = run("cold", "{}")
    assert cold["same"] and cold["replayed"] == 0 and cold["reasons"] == {"absent": 1}, cold
    present = run("present", "{'scale': 3.0}")
    assert present["same"] and present["replayed"] == 0 and present["reasons"].get("guards") == 1, present
    absent = run("absent", "{}")
    assert absent["same"] and absent["replayed"] == 1, absent
