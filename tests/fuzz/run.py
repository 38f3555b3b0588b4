"""Run fuzz programs in this (fresh) process: ``cold`` compiles and saves, ``warm`` loads
with tripwires installed.

    python -m tests.fuzz.run --phase cold|warm --seeds 0:12 --out results.pt
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .programs import generate, interpret, make_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("cold", "warm"), required=True)
    parser.add_argument("--seeds", required=True, help="START:STOP")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start, stop = (int(x) for x in args.seeds.split(":"))
    if args.phase == "warm":
        from tests import _tripwire

        _tripwire.install()
    import artcache

    cache = artcache.Cache(strict=True)
    backend = cache.backend()
    results = {}
    for seed in range(start, stop):
        program = generate(seed)
        inputs = make_inputs(program, seed)
        if program["dynamic"] and inputs[0].dim() and inputs[0].shape[0] >= 2:
            # maybe_: a program may legitimately specialize the dim (e.g. it feeds a matmul)
            torch._dynamo.maybe_mark_dynamic(inputs[0], 0)
        torch._dynamo.reset()  # one shared interpreter frame: keep programs from hitting the recompile limit
        compiled = torch.compile(lambda *xs: interpret(program, list(xs)), backend=backend)
        with torch.no_grad():
            results[str(seed)] = [t.detach().clone() for t in compiled(*inputs)]
    s = cache.stats()
    stats = {"hits": s.hits, "misses": dict(s.misses), "saves": s.saves, "uncacheable": dict(s.uncacheable)}
    torch.save({"results": results, "stats": json.dumps(stats)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
