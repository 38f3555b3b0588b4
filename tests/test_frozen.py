"""Frozen graphs (Inductor ``freezing=True``) as entries, proven in fresh processes.

Cold compiles the frozen programs (tests/corpus/frozen.py: an MLP, a conv net whose batch
norms are folded, a Linear stack under bf16 autocast) into a fresh store; warm loads them
with every compile entry point patched to raise and must equal cold bitwise.  Processes
whose weights differ (another seed, one fine-tuning step) must never be served the entry
compiled for the old weights.
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

from .conftest import REPO, run_python
from .corpus.frozen import PROGRAMS

pytestmark = pytest.mark.slow


def _run(phase: str, out: Path, store: str | None, *extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    env["PYTHONPATH"] = str(REPO)
    if store is not None:
        env["ARTCACHE_STORE"] = store
        env["TORCHINDUCTOR_CACHE_DIR"] = str(out.with_suffix(".inductor"))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.corpus.frozen", "--phase", phase, "--out", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, f"{phase} {extra} failed:\n{proc.stderr[-6000:]}"
    result = torch.load(out, weights_only=True)  # our own result file, written by the worker
    result["stats"] = json.loads(result["stats"])
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("frozen")
    store = f"file://{tmp}/store"
    return {
        "store": store,
        "tmp": tmp,
        "cold": _run("cold", tmp / "cold.pt", store),
        "warm": _run("warm", tmp / "warm.pt", store),
        "eager": _run("eager", tmp / "eager.pt", None),
    }


def test_frozen_graphs_are_saved_and_warm_only_hits(runs: dict[str, Any]) -> None:
    cold, warm = runs["cold"]["stats"], runs["warm"]["stats"]
    assert cold["uncacheable"] == {} and cold["errors"] == {}
    assert cold["saves"] >= len(PROGRAMS) and cold["hits"] == 0
    assert warm["saves"] == 0 and warm["misses"] == {} and warm["errors"] == {}
    assert warm["hits"] == cold["saves"]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_warm_equals_cold_bitwise(runs: dict[str, Any], name: str) -> None:
    cold, warm, eager = (runs[p]["results"][name] for p in ("cold", "warm", "eager"))
    assert len(cold) == len(warm) == len(eager) == 2
    for c, w, e in zip(cold, warm, eager):
        assert c.dtype == w.dtype and torch.equal(c, w), "warm differs from cold"
        tol = 5e-2 if PROGRAMS[name].autocast is not None else 1e-4
        torch.testing.assert_close(c.float(), e.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("variant", [("--seed", "1"), ("--step",)], ids=["other-seed", "fine-tuned"])
def test_changed_weights_never_get_the_old_entry(runs: dict[str, Any], variant: tuple[str, ...]) -> None:
    """Same program, same store, other weights: a miss (compiled and saved anew) whose
    outputs follow the new weights; then a warm process with those weights hits the new
    entry and equals it bitwise."""
    tmp, store = runs["tmp"], runs["store"]
    tag = "-".join(v.strip("-") for v in variant)
    changed = _run("cold", tmp / f"{tag}.pt", store, "--programs", "mlp", *variant)
    assert changed["stats"]["hits"] == 0 and changed["stats"]["saves"] >= 1, changed["stats"]
    eager = _run("eager", tmp / f"{tag}-eager.pt", None, "--programs", "mlp", *variant)
    old = runs["cold"]["results"]["mlp"][0]
    new = changed["results"]["mlp"][0]
    assert not torch.allclose(new, old), "the weights did not change the program's result"
    torch.testing.assert_close(new, eager["results"]["mlp"][0], atol=1e-4, rtol=1e-4)
    warm = _run("warm", tmp / f"{tag}-warm.pt", store, "--programs", "mlp", *variant)
    assert warm["stats"]["hits"] >= 1 and warm["stats"]["misses"] == {}, warm["stats"]
    assert all(torch.equal(a, b) for a, b in zip(warm["results"]["mlp"], changed["results"]["mlp"]))


_SHARED = r"""
import json, sys, torch
import artcache
from tests.corpus.frozen import PROGRAMS
torch._inductor.config.freezing = True
cache = artcache.Cache(strict=True)
model, x = PROGRAMS["convbn"].build(0)
with torch.no_grad():
    for batch in (4, 6):   # two graphs (static shapes), one set of weights
        torch._dynamo.reset()
        torch.compile(model, backend=cache.backend(), dynamic=False)(torch.randn(batch, *x.shape[1:]))
keys = [info.key for info in cache.store.iterate("ac/")]
entries = [cache.lookup(k.split("/", 1)[1]) for k in keys]
# Raw (uncompressed) sizes: what the blob holds, whatever the store's encoding.
data = [{ref.digest: ref.raw_size if ref.encoding else ref.size for ref in e.manifest.blobs if ref.role == "data"}
        for e in entries]
blobs = {info.key: info.size for info in cache.store.iterate("cas/")}
print(json.dumps({"entries": len(entries), "data": data, "cas_bytes": sum(blobs.values()),
                  "saves": cache.stats().saves}))
"""


def test_folded_constants_are_stored_once_across_entries(tmp_path: Path) -> None:
    """Batch norm folded into a convolution makes new weights (constants no parameter
    holds): two entries of one model name the same blobs, stored once."""
    proc = run_python(_SHARED, env={"ARTCACHE_STORE": f"file://{tmp_path}/store",
                                    "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["entries"] == 2 and out["saves"] == 2
    first, second = out["data"]
    # The second convolution's folded weights (16x16x3x3 float32) are over the pickler's
    # inline limit: a blob, named by both entries.  Smaller constants are inlined.
    assert first and set(first) == set(second), (first, second)
    assert sum(first.values()) >= 16 * 16 * 9 * 4, first


_BOUND = r"""
import hashlib, json, torch
import artcache
from tests.corpus.frozen import PROGRAMS
torch._inductor.config.freezing = True
cache = artcache.Cache(strict=True)
model, x = PROGRAMS["mlp"].build(0)
params = sorted(hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest() for p in model.parameters())
with torch.no_grad():
    compiled = torch.compile(model, backend=cache.backend())
    first = compiled(x)
    # A parameter changed in place after the compile: a fresh compile's constants are the
    # parameters themselves (freezing binds them), so the program sees the change.
    model[2].weight.mul_(0.5)
    second = compiled(x)
s = cache.stats()  # before the lookups below, which count too
keys = [info.key.split("/", 1)[1] for info in cache.store.iterate("ac/")]
stored = sorted(ref.name for k in keys for ref in cache.lookup(k).manifest.blobs if ref.role == "data")
print(json.dumps({"first": first.tolist(), "second": second.tolist(), "params": params, "stored": stored,
                  "hits": s.hits, "saves": s.saves}))
"""


def test_the_models_own_weights_are_not_stored_and_a_hit_binds_the_live_ones(tmp_path: Path) -> None:
    """A frozen constant that is one of the model's parameters is not stored (the key's
    frozen_weights factor pins its value): a hit binds the calling process's own tensor,
    as a fresh compile does, so a parameter changed in place after the compile changes
    the hit's program exactly as it changes a fresh compile's."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    cold = run_python(_BOUND, env=env)
    assert cold.returncode == 0, cold.stderr[-4000:]
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor-warm")
    warm = run_python(_BOUND, env=env)
    assert warm.returncode == 0, warm.stderr[-4000:]
    c, w = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (cold, warm))
    assert c["saves"] == 1 and w["hits"] == 1 and w["saves"] == 0, (c, w)
    assert not set(c["params"]) & set(c["stored"]), "a parameter's bytes were stored as a blob"
    assert c["first"] == w["first"] and c["second"] == w["second"]
    assert c["first"] != c["second"]


_LENIENT = r"""
import json, torch
import artcache
from tests.corpus.frozen import PROGRAMS, run
torch._inductor.config.freezing = True
cache = artcache.Cache()
outs = run(PROGRAMS["mlp"], lambda m: torch.compile(m, backend=cache.backend()), seed=0, step=False)
eager = run(PROGRAMS["mlp"], None, seed=0, step=False)
s = cache.stats()
print(json.dumps({"ok": all(torch.allclose(a, b, atol=1e-4) for a, b in zip(outs, eager)),
                  "hits": s.hits, "misses": s.misses, "saves": s.saves}))
"""


def _bad_selection(graph: Any) -> Any:
    from dataclasses import replace

    return replace(graph, frozen_args=(999, *graph.frozen_args)), "selects arguments the graph does not have"


def _bad_model_constant(graph: Any) -> Any:
    from dataclasses import replace

    from artcache._torch.freezing import ModelConstant

    name, alias = sorted(graph.frozen_aliases.items())[0]
    # A view reaching past the end of the parameter it names.
    past = ModelConstant(alias.index, alias.shape, alias.stride, alias.offset + 10**6)
    return replace(graph, frozen_aliases={**graph.frozen_aliases, name: past}), "reaches past its lifted input"


@pytest.mark.parametrize("damage", [_bad_selection, _bad_model_constant], ids=["selection", "model-constant"])
def test_a_bad_frozen_record_is_a_miss(tmp_path: Path, damage: Any) -> None:
    """A frozen entry whose stored argument selection names arguments the graph does not
    have, or whose model constant is a view past its parameter's end: the hit is refused
    (a miss, one warning), the graph compiles and is saved anew."""
    from artcache import Cache
    from artcache.entry import BlobRole
    from artcache.output_code import CompiledGraph

    store = f"file://{tmp_path}/store"
    env = {"ARTCACHE_STORE": store, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    first = run_python(_LENIENT, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    cache = Cache(store, strict=True)
    keys = [info.key.split("/", 1)[1] for info in cache.store.iterate("ac/")]
    assert len(keys) == 1
    loaded = cache.lookup(keys[0])
    assert loaded is not None and any(ref.role == BlobRole.FROZEN for ref in loaded.manifest.blobs)
    graph = CompiledGraph.from_loaded(loaded)
    assert graph.frozen_args is not None and graph.frozen_aliases
    bad, message = damage(graph)
    manifest = loaded.manifest
    cache.save(manifest.key, bad.to_blobs(), factors=manifest.factors, environment=manifest.environment,
               summary=dict(manifest.summary))
    again = run_python(_LENIENT, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "hits": 0, "misses": {"unloadable": 1}, "saves": 1}, (result, again.stderr[-3000:])
    assert again.stderr.count(message) == 1, again.stderr[-3000:]


@pytest.mark.parametrize("record", [
    None, [], [0, [1], [1]], [-1, [1], [1], 0], [0, [1, 2], [1], 0], [0, [1], [-1], 0], [0, [1], [1], -1],
    [0, [1] * 17, [1] * 17, 0], [0, [2**41], [1], 0], [True, [1], [1], 0], ["0", [1], [1], 0],
], ids=repr)
def test_malformed_model_constant_records_are_refused(record: Any) -> None:
    from artcache._torch.freezing import ModelConstant
    from artcache.errors import CorruptEntryError

    with pytest.raises(CorruptEntryError):
        ModelConstant.from_record(record)


def test_an_unreadable_freezing_wrapper_compiles_without_an_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose fw_compiler_freezing wrapper has another shape: the user's compile
    goes on and runs correctly, and nothing is saved."""
    from artcache import Cache
    from artcache._torch import freezing
    from artcache.errors import Uncacheable

    def unreadable(wrapper: object) -> tuple[int, ...]:
        raise Uncacheable("freezing-wrapper", "test")

    monkeypatch.setattr(freezing, "_selection", unreadable)
    monkeypatch.setattr(torch._inductor.config, "freezing", True)
    cache = Cache("memory://", strict=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    x = torch.randn(4, 8)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend=cache.backend())(x)
        torch.testing.assert_close(out, model(x))
    stats = cache.stats()
    assert stats.saves == 0 and stats.hits == 0 and stats.uncacheable == {"no-entry": 1}, stats
