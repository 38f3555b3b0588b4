"""The precompile tier with symbolic shapes, proven in fresh processes.

``pairs`` is compiled with both inputs' dimension 0 marked dynamic: its ShapeEnv guards a
divisibility (``s0 % 2 == 0``), a relation between two inputs (``s1 <= s0 // 2``) and
bounds (``6 <= s0``, ``2 <= s1``), and its graph takes the sizes as SymInt inputs.  A cold
process records it through ``artcache.precompile`` and through ``torch.compile`` with
precompile on; a warm process, with the compiler's tripwires and the tracer's armed,
replays it at the recorded sizes and at new sizes the guards accept.  Another process
checks the new sizes against a fresh Inductor compile (bitwise), and sizes that break a
guard against eager (they go through Dynamo).  A stored shape guard that is malformed
(an unknown operator, nesting past the bound, an int past the bound, text in place of a
tree) is refused as a miss before anything is evaluated.  A frame with a graph break and
symbolic sizes is refused by name (chains hold static graphs) and goes through Dynamo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import keypair_envs, run_cli, run_phase, run_python

PROGRAM = r'''
import json, sys, torch, artcache
phase, out = sys.argv[1], sys.argv[2]
armed = [False]
if phase != "cold":
    from tests import _tripwire
    if phase == "warm":
        _tripwire.install()
    _tripwire.arm_tracer(lambda: armed[0])

def pairs(x, y):
    return x.reshape(-1, 2).sum(1)[: y.shape[0]].sum() * y + x[:6].sum()

def pairs_tc(x, y):  # the same program, served through torch.compile's precompile entry
    return x.reshape(-1, 2).sum(1)[: y.shape[0]].sum() * y + x[:6].sum()

def inputs(n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    x, y = torch.randn(n, generator=g), torch.randn(m, generator=g)
    torch._dynamo.mark_dynamic(x, 0)
    torch._dynamo.mark_dynamic(y, 0)
    return x, y

cache = artcache.Cache(strict=phase != "hostile")
pre = artcache.precompile(pairs, cache=cache)
tc = torch.compile(pairs_tc, backend=cache.backend(options={"precompile": True}))
results, info = {}, {}
if phase in ("cold", "warm"):
    armed[0] = phase == "warm"
    for n, m in ((8, 3), (12, 5)):
        results[f"pre-{n}-{m}"] = pre(*inputs(n, m))
        results[f"tc-{n}-{m}"] = tc(*inputs(n, m))
elif phase == "changed":
    armed[0] = True  # new sizes the guards accept: replayed
    results["pre-12-5"] = pre(*inputs(12, 5))
    results["tc-12-5"] = tc(*inputs(12, 5))
    results["tc-14-7"] = tc(*inputs(14, 7))  # through torch's guard tree, built at the call before
    armed[0] = False
    fresh = torch.compile(pairs, backend="inductor", dynamic=False)
    results["fresh-12-5"] = fresh(*inputs(12, 5))
    results["fresh-14-7"] = fresh(*inputs(14, 7))
    results["tc-8-6"] = tc(*inputs(8, 6))  # the tree's shape guard fails: Dynamo
    # 8 and 6 break "s1 <= s0 // 2" (the slice is all 4 rows): Dynamo traces, the result is eager's.
    results["pre-8-6"] = pre(*inputs(8, 6))
    results["eager-8-6"] = pairs(*inputs(8, 6))
elif phase.startswith("hostile"):
    from artcache import pickler
    from artcache.entry import BlobRole, NewBlob
    x, y = inputs(8, 3)
    key, _ = pre._frame_key({"x": x, "y": y})
    loaded = pre.cache.lookup(key.key)
    doc = pickler.loads(loaded.blob(BlobRole.OBJECT), {}, verify=True)
    # (No global named like an attribute pairs reads: its frame key digests those globals.)
    stored = [g for g in doc["guards"] if g[0] == "shape"]
    kind = phase.split(":")[1]
    target = stored[0]
    if kind == "unknown-op":
        target[2] = ["pow", target[2][1], target[2][2]]
    elif kind == "deep":
        for _ in range(40):
            target[2] = ["not", ["not", target[2]]]
    elif kind == "huge-int":
        target[2] = ["<=", ["int", 2**63 - 1], target[2]]
    elif kind == "text":
        target[2] = "__import__('os').system('echo pwned')"
    elif kind == "arg-leaf":
        target[2] = ["==", ["arg", 0], ["arg", 0]]
    pre.cache.save(key.key, [NewBlob(BlobRole.OBJECT, pickler.dumps(doc).data)], factors=key.digests(),
                   environment=loaded.manifest.environment, summary={"title": "tampered frame entry"})
    reader = artcache.precompile(pairs, cache=artcache.Cache())
    results["pre-8-3"] = reader(x, y)
    results["eager-8-3"] = pairs(x, y)
    info["reasons"] = dict(reader.reasons)
    info["replayed"] = reader.replayed
    info["shape_guards"] = len(stored)
torch.save(results, out)
from artcache import frame_hook
info["pre"] = [pre.replayed, dict(pre.reasons), dict(pre.refusals)]
info["tc"] = [[h.replayed, dict(h.reasons), dict(h.refusals), h.trees] for h in frame_hook.attached()]
info["misses"] = dict(cache.stats().misses)
print(json.dumps(info))
'''


def _run(phase: str, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    return run_phase(PROGRAM, phase, tmp, env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("precompile-dynamic")
    store = f"file://{tmp}/store"
    writer, reader = keypair_envs(tmp, store)
    cold = _run("cold", tmp, writer)
    return {"cold": cold, "warm": _run("warm", tmp, reader), "changed": _run("changed", tmp, reader),
            "tmp": tmp, "writer": writer, "reader": reader, "store": store}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.slow
def test_cold_records_a_dynamic_frame(runs: dict[str, Any]) -> None:
    pre, tc = runs["cold"]["info"]["pre"], runs["cold"]["info"]["tc"]
    assert pre[2] == {}, pre  # no refusal: the frame with symbols was recorded
    assert [t[2] for t in tc] == [{}], tc
    shown = run_cli("ls", "--format", "json", env={"ARTCACHE_STORE": runs["store"]})
    frames = [e for e in json.loads(shown.stdout)["entries"] if e["title"] == "precompiled frame __main__.pairs"]
    assert len(frames) == 1, shown.stdout[:2000]
    text = run_cli("inspect", frames[0]["key"], env={"ARTCACHE_STORE": runs["store"]}).stdout
    # inspect shows the shape guards and the SymInt inputs as readable text.
    assert "L['x'].size()[0] % 2) == 0" in text and "L['y'].size()[0] <= (L['x'].size()[0] // 2)" in text, text
    assert "L['x'].size()[0]" in text.split("guards")[0], text


@pytest.mark.slow
@pytest.mark.parametrize("call", ["pre-8-3", "pre-12-5", "tc-8-3", "tc-12-5"])
def test_warm_replays_recorded_and_new_sizes_bitwise(runs: dict[str, Any], call: str) -> None:
    """Every warm call replayed (compiler and tracer tripwires armed) and equals cold."""
    assert _same(runs["cold"]["results"][call], runs["warm"]["results"][call]), call
    pre, tc = runs["warm"]["info"]["pre"], runs["warm"]["info"]["tc"]
    assert pre[:2] == [2, {}], pre
    assert [t[:2] + t[3:] for t in tc] == [[2, {}, 1]], tc  # the second call through torch's guard tree
    assert runs["warm"]["info"]["misses"] == {}, runs["warm"]["info"]


@pytest.mark.slow
def test_new_size_within_the_guards_equals_a_fresh_compile(runs: dict[str, Any]) -> None:
    got = runs["changed"]["results"]
    assert _same(got["pre-12-5"], got["fresh-12-5"])
    assert _same(got["tc-12-5"], got["fresh-12-5"])
    assert _same(got["tc-14-7"], got["fresh-14-7"])


@pytest.mark.slow
def test_size_that_breaks_a_shape_guard_falls_back_correctly(runs: dict[str, Any]) -> None:
    got, pre = runs["changed"]["results"], runs["changed"]["info"]["pre"]
    assert pre[0] == 1, pre  # only the first call replayed; 8, 6 went through Dynamo
    torch.testing.assert_close(got["pre-8-6"], got["eager-8-6"])
    torch.testing.assert_close(got["tc-8-6"], got["eager-8-6"])
    [[replayed, _, _, trees]] = runs["changed"]["info"]["tc"]
    assert (replayed, trees) == (2, 1), runs["changed"]["info"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unknown-op", "deep", "huge-int", "text", "arg-leaf"])
def test_malformed_stored_shape_guard_is_a_miss(runs: dict[str, Any], kind: str) -> None:
    """A frame entry (signed by the trusted key) whose shape guard is malformed is refused
    before anything is evaluated: a miss ("unloadable"), and Dynamo computes the call.
    (Each on a copy of the cold store: a refused entry may be dropped from it.)"""
    store = runs["tmp"] / f"store-{kind}"
    shutil.copytree(runs["tmp"] / "store", store)
    env = {**runs["writer"], "ARTCACHE_STORE": f"file://{store}",
           "ARTCACHE_TRUSTED_KEYS": runs["reader"]["ARTCACHE_TRUSTED_KEYS"]}
    done = _run(f"hostile:{kind}", runs["tmp"], env)
    info, got = done["info"], done["results"]
    assert info["shape_guards"] >= 3, info
    assert info["replayed"] == 0 and info["reasons"] == {"unloadable": 1}, info
    torch.testing.assert_close(got["pre-8-3"], got["eager-8-3"])



_DATA_DEPENDENT = r'''
import json, sys, torch, artcache
torch._dynamo.config.capture_dynamic_output_shape_ops = True
if sys.argv[1] == "warm":
    from tests import _tripwire
    _tripwire.arm_tracer(lambda: True)

def positive(x):  # a size from data (an unbacked symbol) beside a marked one
    kept = x[x > 0]
    return kept.sum() * x.shape[0] + kept.numel()

pre = artcache.precompile(positive, cache=artcache.Cache(strict=True))
out = []
for n, seed in ((8, 0), (11, 1), (11, 2)):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    torch._dynamo.mark_dynamic(x, 0)
    got, want = pre(x), positive(x)
    out.append([float(got), float(want)])
print(json.dumps({"out": out, "replayed": pre.replayed, "refusals": pre.refusals}))
'''


def test_data_dependent_sizes_beside_symbolic_ones_replay(tmp_path: Path) -> None:
    """A size computed from data (Dynamo guards none of those; the graph checks them as
    it runs) next to a marked one: recorded, then replayed without tracing in a fresh
    process for other sizes and other data, equal to eager."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store"}
    for phase in ("cold", "warm"):
        proc = run_python(f"import sys; sys.argv = ['x', {phase!r}]\n" + _DATA_DEPENDENT,
                          env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"ind-{phase}")})
        assert proc.returncode == 0, proc.stderr[-4000:]
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        assert info["refusals"] == {}, info
        for got, want in info["out"]:
            assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), info
    assert info["replayed"] == 3, info



_BREAK_DYNAMIC = r'''
import json, sys, torch, artcache
phase, out = sys.argv[1], sys.argv[2]

def broken(x):
    y = torch.sin(x) * 2
    print("between the graphs", file=sys.stderr)  # a graph break: the frame is a chain
    return y.sum(0) + x.shape[0]

c = torch.compile(broken, backend="artcache", options={"precompile": True}, dynamic=True)
fresh = torch.compile(broken, backend="inductor", dynamic=True)
got = []
for rows in (5, 7, 9):
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(rows))
    got += [c(x), fresh(x)]
from artcache import frame_hook
hook, = frame_hook.attached()
torch.save(got, out)
print(json.dumps({"replayed": hook.replayed, "refusals": sorted(hook.refusals)}))
'''


@pytest.mark.slow
def test_a_chain_with_symbolic_shapes_is_not_precompilable_and_falls_back_correctly(tmp_path: Path) -> None:
    """A frame with a graph break compiled with symbolic sizes (``dynamic=True``): a chain
    holds graphs of static shapes only, so the frame is refused by name (``dynamic-shapes``;
    later sizes, served by Dynamo's own symbolic entry, compile nothing to record:
    ``no-graph``), no frame entry is saved, and in a second fresh process every call goes
    through Dynamo, size by size equal to a fresh Inductor compile, bitwise."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    for phase in ("first", "second"):
        run = run_phase(_BREAK_DYNAMIC, phase, tmp_path, env, weights_only=True)
        assert run["info"] == {"replayed": 0, "refusals": ["dynamic-shapes", "no-graph"]}, run["info"]
        got = run["results"]
        for served, fresh in zip(got[0::2], got[1::2], strict=True):
            assert served.dtype == fresh.dtype and torch.equal(served, fresh), phase
    proc = run_cli("ls", "--format", "json", env={"ARTCACHE_STORE": env["ARTCACHE_STORE"]})
    assert proc.returncode == 0, proc.stderr
    assert not [e for e in json.loads(proc.stdout)["entries"] if e["title"].startswith("precompiled frame")]
