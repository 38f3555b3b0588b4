"""Run fuzz programs in this (fresh) process, one phase of the campaign (``campaign.py``):

* ``cold``: under the cold condition, eager first, then compiled with artcache into the
  store (a fresh compile: the store holds none of these programs yet); on a compile error,
  a plain Inductor compile tells whether artcache lost it;
* ``warm``: programs whose condition is unchanged, compile tripwires installed: each must
  be served from the store;
* ``changed``: programs whose condition changed, under the warm value, tripwires installed
  as well: a miss shows as the miss artcache counts and the compile that then trips (the
  compile itself would be a plain Inductor compile, which the cold phase already ran);
  a hit runs and its results are kept;
* ``fresh``: a plain Inductor compile (torch's caches off) under the warm value, no
  tripwires, for the programs that hit in ``changed``: what the hit must equal.

    python -m tests.fuzz.run --phase cold|warm|changed|fresh --programs FILE --results DIR [--device cpu|cuda]

One result file per program (``<seed>.pt``) in DIR; ``DIR/current`` names the program in
progress, so that the campaign can tell which one a crashed process died on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import conditions
from .programs import interpret, make_inputs


def _optimizer(program: dict[str, Any], device: str) -> tuple[list[torch.Tensor], Any]:
    spec = program["optimizer"]
    g = torch.Generator().manual_seed(program["seed"])
    params = [torch.randn(s, generator=g, dtype=torch.float32).to(device).requires_grad_() for s in spec["params"]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float32).to(device)
    kwargs: dict[str, Any] = {"lr": spec["lr"], "weight_decay": spec["weight_decay"]}
    if spec["momentum"] is not None:
        kwargs["momentum"] = spec["momentum"]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[spec["name"]]
    return params, cls(params, **kwargs)


def _detach(values: Any) -> list[Any]:
    return [v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for v in values]


def execute(program: dict[str, Any], device: str, compiler: Callable[[Any], Any] | None) -> dict[str, Any]:
    """Run ``program`` once under the condition already applied; ``compiler`` wraps a
    function (``torch.compile`` with some backend) or is None for eager.  Returns the
    results: outputs, gradients, inputs after the call, optimizer state; and flags."""
    torch._dynamo.reset()  # one interpreter code object for every program: no recompile limit
    if program["kind"] == "optimizer":
        params, opt = _optimizer(program, device)
        step = compiler(opt.step) if compiler else opt.step
        for _ in range(program["optimizer"]["steps"]):
            step()
        state = [t for p in params for _, t in sorted(opt.state[p].items()) if isinstance(t, torch.Tensor)]
        return {"values": _detach(params) + _detach(state), "grad": [False] * (len(params) + len(state))}
    fn = lambda *xs: interpret(program, list(xs))  # noqa: E731
    run = compiler(fn) if compiler else fn
    values: list[Any] = []
    calls = [0]
    if program["dynamic"] and program["inputs"][0]["shape"]:
        calls.append(1)
    for grow in calls:
        inputs = make_inputs(program, program["seed"], device, grow=grow)
        if grow:
            try:  # the grown input may not fit the program (a matmul, a gather)
                interpret(program, make_inputs(program, program["seed"], device, grow=grow))
            except (RuntimeError, IndexError):
                break
        elif program["dynamic"] and inputs[0].dim() and inputs[0].shape[0] >= 2:
            torch._dynamo.maybe_mark_dynamic(inputs[0], 0)
        outs = run(*inputs)
        values += _detach(outs)
        flags = [bool(o.requires_grad) for o in outs]
        if program["kind"] == "training" and torch.is_grad_enabled():
            loss = [o.float().sum() for o in outs if o.requires_grad]
            if loss:
                torch.stack(loss).sum().backward()
            values += _detach([x.grad for x in inputs if x.requires_grad])
        values += _detach([x for x in inputs if x.is_floating_point()])  # after in-place mutation
    return {"values": values, "grad": flags}


def _stats(cache: Any) -> dict[str, Any]:
    s = cache.stats()
    return {"hits": s.hits, "saves": s.saves, "misses": dict(s.misses), "uncacheable": dict(s.uncacheable)}


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"hits": after["hits"] - before["hits"], "saves": after["saves"] - before["saves"]}
    for name in ("misses", "uncacheable"):
        out[name] = {k: v - before[name].get(k, 0) for k, v in after[name].items() if v != before[name].get(k, 0)}
    return out


def _attempt(record: dict[str, Any], name: str, thunk: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        result = thunk()
    except Exception as exc:  # noqa: BLE001 - a failing program is a result, the batch goes on
        record[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:800]
        record[f"{name}_trace"] = traceback.format_exc()[-2500:]
        return None
    record[name] = result
    return result


def _plain_inductor(fn: Any) -> Any:
    return torch.compile(fn, backend="inductor")


@contextlib.contextmanager
def _torch_caches_off() -> Any:
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def run_program(program: dict[str, Any], phase: str, device: str, cache: Any) -> dict[str, Any]:
    condition = program["condition"]
    value = condition["cold"] if phase == "cold" else condition["warm"]
    record: dict[str, Any] = {"seed": program["seed"], "phase": phase}
    artcache_compile = lambda fn: torch.compile(fn, backend=cache.backend())  # noqa: E731
    with conditions.applied(condition["name"], value, device):
        if phase in ("cold", "fresh"):
            _attempt(record, "eager", lambda: execute(program, device, None))
        if phase == "fresh":
            with _torch_caches_off():
                _attempt(record, "compiled", lambda: execute(program, device, _plain_inductor))
            return record
        before = _stats(cache)
        start = time.perf_counter()
        _attempt(record, "compiled", lambda: execute(program, device, artcache_compile))
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["stats"] = _delta(before, _stats(cache))
        if phase == "cold" and "compiled_error" in record:
            with _torch_caches_off():
                _attempt(record, "fresh", lambda: execute(program, device, _plain_inductor))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("cold", "warm", "changed", "fresh"), required=True)
    parser.add_argument("--programs", required=True, help="JSON list of programs")
    parser.add_argument("--results", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    # Setting the float32 matmul precision to any value once turns torch's per-backend
    # precision readings from "none" into explicit values, which artcache keys apart; every
    # phase starts from the same explicit state, so a program's key does not depend on
    # which other programs ran before it in its process (see benchmarks/results/reliability.md).
    torch.set_float32_matmul_precision(torch.get_float32_matmul_precision())
    programs = json.loads(Path(args.programs).read_text())
    if args.phase in ("warm", "changed"):
        from tests import _tripwire

        _tripwire.install()
    import artcache

    cache = artcache.Cache(strict=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for program in programs:
        out = results / f"{program['seed']}.pt"
        if out.exists():
            continue
        (results / "current").write_text(str(program["seed"]))
        torch.save(run_program(program, args.phase, args.device, cache), out)
    (results / "current").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
