"""Differential program fuzzing, CI's slice of the campaign (``tests/fuzz/campaign.py``):
a few seeded programs covering the kinds (forward, training with a custom op and dynamic
shapes, a compiled optimizer step) and conditions kept or changed between a cold and a
fresh warm process.  Kept: served warm with tripwires on, bitwise equal to cold.  Changed:
the warm process misses and compiles its own program.

``ARTCACHE_FUZZ_N`` / ``ARTCACHE_FUZZ_SEED`` run that many seeds from that one instead;
the full campaign is ``python -m tests.fuzz.campaign --seeds 0:1000 --jobs N``.  Failing
programs are written as reproducers into ``ARTCACHE_FUZZ_ARTIFACTS`` (default: the test's
temp dir) and named in the failure message.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .fuzz import campaign, conditions
from .fuzz.programs import generate

pytestmark = pytest.mark.slow

# training with a custom op and a dynamic dim (kept), forward with input mutation (kept),
# AdamW step (kept), forward with mutation under another thread count (changed), training
# with a dynamic dim under another default dtype (changed).  The custom-op program runs
# first in its process: after another compile it misses warm today (the expected failure
# in test_fuzz_reproducers.py).
SLICE = (10, 14, 23, 13, 19)


def _seeds() -> list[int]:
    if "ARTCACHE_FUZZ_N" in os.environ:
        first = int(os.environ.get("ARTCACHE_FUZZ_SEED", "0"))
        return list(range(first, first + int(os.environ["ARTCACHE_FUZZ_N"])))
    return list(SLICE)


def test_fuzz_programs_cold_then_warm(tmp_path: Path) -> None:
    programs = [generate(seed) for seed in _seeds()]
    records = campaign.run_batch(programs, tmp_path / "work", "cpu", timeout=3000)
    artifacts = Path(os.environ.get("ARTCACHE_FUZZ_ARTIFACTS", tmp_path / "reproducers"))
    written = campaign.write_reproducers(records, artifacts, "cpu")
    assert not written, "failing programs: " + "; ".join(
        f"{r['outcome']} {seed}: {r['detail']}" for seed, r in records.items() if r["outcome"] in campaign.FAILURES
    ) + f" (reproducers: {written})"
    if "ARTCACHE_FUZZ_N" not in os.environ:
        for seed, record in records.items():
            changed = conditions.changed(record["condition"])
            assert record["outcome"] == ("miss-changed" if changed else "hit"), (seed, record["outcome"], record["detail"])


def _record(values: list[float], **stats: int) -> dict:
    import torch

    result = {"values": [torch.tensor(values)], "grad": [False]}
    return {"eager": result, "compiled": result,
            "stats": {"hits": 0, "saves": 0, "misses": {}, "uncacheable": {}, **stats}}


def test_campaign_classifies_stale_hits_and_differences() -> None:
    """The campaign's verdicts can fail: a hit under a changed condition that affects the
    program is a stale hit, a warm result one bit off is a difference, a recompile under
    the tripwires is a miss; a changed thread count cannot affect a GPU-only program."""
    program = generate(13)  # forward, threads 2 -> 1 (changed)
    cold = _record([1.0, 2.0], saves=1)
    assert campaign.classify(program, cold, _record([1.0, 2.0], saves=1))[0] == "miss-changed"
    tripped = {"compiled_error": "TripwireError", "stats": {"hits": 0, "saves": 0, "misses": {"absent": 1}, "uncacheable": {}}}
    assert campaign.classify(program, cold, tripped)[0] == "miss-changed"
    assert campaign.classify(program, cold, _record([1.0, 2.0], hits=1))[0] == "stale-hit"
    gpu = {**program, "device": "cuda"}
    hit = {**_record([1.0, 2.0], hits=1), "fresh": _record([1.0, 2.0])}
    assert campaign.classify(gpu, cold, hit)[0] == "hit-unaffected"
    kept = generate(14)  # forward, condition kept
    assert campaign.classify(kept, cold, _record([1.0, 2.0], hits=1))[0] == "hit"
    assert campaign.classify(kept, cold, _record([1.0, 2.0000002], hits=1))[0] == "warm-differs"
    assert campaign.classify(kept, cold, {"compiled_error": "TripwireError: tripwire: compile_fx ran", "stats": {}})[0] == "warm-missed"


def test_campaign_classifies_programs_without_a_graph_and_odd_strides() -> None:
    """A program Dynamo makes no graph of (it returns an input) looked nothing up: not a
    warm error under a changed condition; its output, an input with a size-1 dimension's
    odd stride, still compares as bytes."""
    import torch

    program = {**generate(13), "ops": [], "outputs": [0]}  # forward, threads 2 -> 1 (changed)
    odd = torch.randn(2, 7, dtype=torch.float64).as_strided((1,), (2,))
    nothing = {"hits": 0, "saves": 0, "misses": {}, "uncacheable": {}}
    cold = {"eager": {}, "compiled": {"grad": [], "values": [odd]}, "stats": nothing}
    warm = {"compiled": {"grad": [], "values": [odd.clone()]}, "stats": nothing}
    assert campaign.classify(program, cold, warm)[0] == "no-graph"
    other = {"compiled": {"grad": [], "values": [odd + 1]}, "stats": nothing}
    assert campaign.classify(program, cold, other)[0] == "warm-differs"
