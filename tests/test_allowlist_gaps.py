"""Graphs the OpInfo corpus found uncacheable for want of an allowlist entry, now cached
and served warm: multi-output views and views with flag arguments (their ViewMeta state
layouts), ``torch.return_types`` results (max, sort, topk...), masked reductions and
window functions (in-graph torch functions).  Cold in one process, warm in a fresh one
with the compile tripwires on, outputs bitwise equal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from artcache._torch import entry_types as compat
from artcache.errors import CorruptEntryError
from artcache.pickler import default_allowlist, dumps, loads

from .conftest import run_python

_PROGRAMS = """
import json, sys, torch
if sys.argv[-1] == "warm":
    from tests import _tripwire
    _tripwire.install()
import artcache
cache = artcache.Cache(strict=True)
x = torch.linspace(-2, 2, 24).reshape(4, 6)
fns = {
    "chunk": lambda t: t.chunk(2),
    "expand": lambda t: t[:, :1].expand(4, 5),
    "as_strided": lambda t: t.flatten().as_strided((2, 2), (1, 2)),
    "max_dim": lambda t: torch.max(t, 1),
    "topk": lambda t: torch.topk(t, 2),
    "masked_sum": lambda t: torch.masked.sum(t, 1, mask=t > 0),
    "hann": lambda t: torch.signal.windows.hann(8) + t.sum(),
}
out = {}
for name, fn in fns.items():
    torch._dynamo.reset()
    result = torch.compile(fn, backend=cache.backend())(x.clone())
    out[name] = [r.flatten().tolist() for r in (result if isinstance(result, tuple) else (result,))]
s = cache.stats()
print(json.dumps({"out": out, "hits": s.hits, "saves": s.saves, "uncacheable": s.uncacheable}))
"""


@pytest.mark.slow
def test_former_allowlist_gaps_are_served_warm(tmp_path: Path) -> None:
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store"}
    runs = {}
    for phase in ("cold", "warm"):
        code = _PROGRAMS.replace('sys.argv[-1] == "warm"', repr(phase == "warm"))
        proc = run_python(code, env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / phase)})
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["cold"]["uncacheable"] == {} and runs["cold"]["saves"] == 7, runs["cold"]
    assert runs["warm"]["hits"] == 7 and runs["warm"]["saves"] == 0, runs["warm"]
    assert runs["warm"]["out"] == runs["cold"]["out"]


def test_return_types_round_trip_and_reject_bad_fields() -> None:
    value = torch.return_types.max((torch.ones(2), torch.zeros(2, dtype=torch.long)))
    payload = dumps(value)
    back = loads(payload.data, payload.blobs)
    assert type(back) is torch.return_types.max and torch.equal(back.values, value.values)
    build = default_allowlist().class_entry(torch.return_types.max).decode
    with pytest.raises(CorruptEntryError):
        build([torch.ones(1)])


def test_view_meta_states_of_every_layout_round_trip() -> None:
    allow = compat.entry_allowlist()
    from torch._C import _functionalization as functionalization

    mode = functionalization.InverseReturnMode.ViewOrScatterInverse
    split = allow.class_entry(functionalization.split_Tensor_ViewMeta)
    meta = split.decode([False, 1, True, mode, 2, 0])
    assert list(meta.__getstate__()) == [False, 1, True, mode, 2, 0]
    expand = allow.class_entry(functionalization.expand_ViewMeta)
    assert list(expand.decode([False, False, mode, [3, 4], False]).__getstate__()) == [False, False, mode, [3, 4], False]
    for bad in ([False, 1, True, mode, "2", 0], [False, 1, True, mode, [1.5]], "state", [False, True, mode, [3, 4]]):
        with pytest.raises(CorruptEntryError):
            split.decode(bad) if bad != [False, True, mode, [3, 4]] else expand.decode(bad)
