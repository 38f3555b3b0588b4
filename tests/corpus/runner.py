"""Run corpus programs in this (fresh) process and save what they computed.

    python -m tests.corpus.runner --phase cold|warm|eager --out results.pt [--programs a,b]
        [--precompile [--may-trace a,b]]

``cold`` and ``warm`` compile with ``backend=artcache`` in strict mode against the store
in ``ARTCACHE_STORE``; ``warm`` first installs the tripwires, so any compile raises.
``--precompile`` compiles through ``artcache.precompile`` instead; its ``warm`` phase also
makes Dynamo's tracer raise, except in the programs ``--may-trace`` names.
The result file holds plain tensors (``torch.save``) and the cache stats (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from .programs import PROGRAMS, Program


def _leaves(value: Any) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _resize(inputs: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    first = inputs[0]
    g = torch.Generator().manual_seed(size)
    bigger = torch.randn(size, *first.shape[1:], generator=g, dtype=first.dtype).requires_grad_(first.requires_grad)
    return [bigger, *inputs[1:]]


def run_program(program: Program, compile_fn: Callable[[Any], Any] | None) -> dict[str, list[torch.Tensor]]:
    fn, inputs = program.build()
    module = fn if isinstance(fn, torch.nn.Module) else None
    target = compile_fn(fn) if compile_fn is not None else fn
    calls = [inputs] + ([_resize(inputs, program.second_size)] if program.dynamic else [])
    record: dict[str, list[torch.Tensor]] = {"outputs": [], "grads": [], "inputs_after": [], "buffers": []}
    for args in calls:
        if program.dynamic and compile_fn is not None:
            torch._dynamo.mark_dynamic(args[0], 0)
        torch.manual_seed(1234)  # RNG programs draw the same numbers in every process
        if program.train:
            out = target(*args)
            loss = sum(t.float().sum() for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point())
            loss.backward()  # type: ignore[union-attr]
            params = list(module.parameters()) if module is not None else []
            record["grads"] += [p.grad.detach().clone() for p in params + args if p.grad is not None]
            for p in params + args:
                p.grad = None
        else:
            with torch.no_grad():
                out = target(*args)
        record["outputs"] += _leaves(out)
        record["inputs_after"] += _leaves(args)
        if module is not None:
            record["buffers"] += _leaves(list(module.buffers()))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("cold", "warm", "eager"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--programs", default="")
    parser.add_argument("--precompile", action="store_true")
    parser.add_argument("--may-trace", default="")
    args = parser.parse_args(argv)
    names = [n for n in args.programs.split(",") if n] or list(PROGRAMS)
    may_trace = set(args.may_trace.split(","))
    current = [""]
    if args.phase == "warm":
        from tests import _tripwire

        _tripwire.install()
        if args.precompile:
            _tripwire.arm_tracer(lambda: current[0] not in may_trace)
    compile_fn = None
    cache = None
    wrapped: list[Any] = []
    if args.phase != "eager":
        import artcache

        cache = artcache.Cache(strict=True)
        backend = cache.backend()
        compile_fn = lambda fn: torch.compile(fn, backend=backend)  # noqa: E731
        if args.precompile:
            compile_fn = lambda fn: wrapped.append(cache.precompile(fn)) or wrapped[-1]  # noqa: E731
    results = {}
    frames: dict[str, Any] = {}
    from tests import _tripwire

    # The first program after which Inductor's compiler was imported (a warm run should
    # import it never: artcache/_lean_load.py), with what was imported.
    compiler_imported: dict[str, Any] = {}
    for name in names:
        # torch.compile wraps plain functions in one shared frame; without a reset, its
        # recompile limit would silently run later programs eagerly.
        torch._dynamo.reset()
        current[0] = name
        results[name] = run_program(PROGRAMS[name], compile_fn)
        if wrapped:
            frames[name] = {"replayed": wrapped[-1].replayed, "reasons": dict(wrapped[-1].reasons)}
        if not compiler_imported and _tripwire.compiler_modules_imported():
            compiler_imported = {"program": name, "modules": _tripwire.compiler_modules_imported()}
        print(f"ran {name}", file=sys.stderr, flush=True)
    stats = cache.stats() if cache is not None else None
    torch.save(
        {
            "results": results,
            "stats": json.dumps(
                {"hits": stats.hits, "misses": dict(stats.misses), "saves": stats.saves,
                 "uncacheable": dict(stats.uncacheable), "errors": dict(stats.errors),
                 "compiler_imported": compiler_imported, "frames": frames} if stats else {}
            ),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
