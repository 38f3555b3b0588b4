"""Frozen programs (Inductor ``freezing=True``, inference under ``no_grad``), run in a fresh
process and saved for comparison.

    python -m tests.corpus.frozen --phase cold|warm|eager --out results.pt
        [--programs mlp,convbn,bf16] [--seed N] [--step]

``--seed`` builds every weight from another seed; ``--step`` applies one SGD step to the
weights before compiling (a fine-tuned model).  ``cold`` and ``warm`` compile with
``backend=artcache`` in strict mode against ``ARTCACHE_STORE`` with freezing on; ``warm``
installs the compile tripwires first.  The result file holds the outputs (two calls per
program) and the cache stats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class FrozenProgram:
    name: str
    build: Callable[[int], tuple[nn.Module, torch.Tensor]]
    autocast: torch.dtype | None = None  # CPU autocast dtype around the call


def _mlp(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 32))
    return model.eval(), torch.randn(16, 64, generator=torch.Generator().manual_seed(100))


def _convbn(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            # Running statistics away from (0, 1), so that folding them into the conv
            # changes its weights.
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(101))


def _bf16(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64))
    return model.eval(), torch.randn(8, 64, generator=torch.Generator().manual_seed(102))


PROGRAMS: dict[str, FrozenProgram] = {
    p.name: p for p in (
        FrozenProgram("mlp", _mlp),
        FrozenProgram("convbn", _convbn),
        FrozenProgram("bf16", _bf16, autocast=torch.bfloat16),
    )
}


def fine_tune_step(model: nn.Module, x: torch.Tensor) -> None:
    """One SGD step on a made-up loss: every trainable weight moves a little."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(x).float().pow(2).mean().backward()
    opt.step()
    model.eval()


@contextlib.contextmanager
def _autocast(dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast("cpu", dtype=dtype):
            yield


def run(program: FrozenProgram, compile_fn: Callable[[Any], Any] | None, *, seed: int, step: bool) -> list[torch.Tensor]:
    model, x = program.build(seed)
    if step:
        fine_tune_step(model, x)
    target = compile_fn(model) if compile_fn is not None else model
    outs = []
    with torch.no_grad(), _autocast(program.autocast):
        for _ in range(2):
            outs.append(target(x).detach().clone())
    return outs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("cold", "warm", "eager"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--programs", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.programs.split(",") if n] or list(PROGRAMS)
    if args.phase == "warm":
        from tests import _tripwire

        _tripwire.install()
    compile_fn = None
    cache = None
    if args.phase != "eager":
        import artcache

        torch._inductor.config.freezing = True
        cache = artcache.Cache(strict=True)
        backend = cache.backend()
        compile_fn = lambda fn: torch.compile(fn, backend=backend)  # noqa: E731
    results = {}
    for name in names:
        torch._dynamo.reset()
        results[name] = run(PROGRAMS[name], compile_fn, seed=args.seed, step=args.step)
        print(f"ran {name}", file=sys.stderr, flush=True)
    stats = cache.stats() if cache is not None else None
    torch.save(
        {
            "results": results,
            "stats": json.dumps(
                {"hits": stats.hits, "misses": dict(stats.misses), "saves": stats.saves,
                 "uncacheable": dict(stats.uncacheable), "errors": dict(stats.errors)} if stats else {}
            ),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
