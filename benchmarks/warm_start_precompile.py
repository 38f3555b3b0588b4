"""Warm-start benchmark of the precompile tier: first call of a warm process, each in a
fresh ``python`` process, beside the Dynamo-only floor, artcache's plain warm start and
torch's own ``aot_compile`` + ``load_compiled_function``.

    python benchmarks/warm_start_precompile.py [--models mlp] [--device cpu|cuda]
        [--repeats 3] [--steps 30] [--out FILE]
    ARTCACHE_STORE=<store> python benchmarks/warm_start_precompile.py --steady --fill [--threads 1]
    ARTCACHE_STORE=<store> python benchmarks/warm_start_precompile.py --steady [--threads 1] [--models mlp]

==============================  ================================================================
floor                           ``torch.compile(model, backend="eager")``: Dynamo tracing and an
                                eager run, no compiler
artcache-warm                   ``backend=Cache().backend()`` on the store artcache's cold run
                                filled, with new empty torch dirs (Dynamo traces, graphs hit)
artcache-precompile             ``artcache.precompile(model)`` on the store its cold run filled,
                                new empty torch dirs: a frame hit skips Dynamo's tracing too
artcache-pc-fallback            ``artcache.precompile(model)`` on a copy of artcache-warm's store: no
                                frame entry, so the tier looks its frame up, misses, lets Dynamo
                                trace (the graphs hit) and records the frame: what the tier costs
                                where it cannot serve, against artcache-warm
artcache-pc-guardfail           (model ``mlp-flag`` only) ``artcache.precompile(model)`` on a copy of
                                artcache-precompile's store, with the flag the model's forward reads
                                flipped: the frame entry is found, its guards fail, Dynamo traces
                                (the graphs hit; nothing is recorded): the fallback's cost, against
                                artcache-warm
artcache-pc-compile             ``torch.compile(model, backend=Cache().backend(options={"precompile":
                                True}))`` on the store its cold run filled, new empty torch dirs:
                                the same tier through torch's precompile-entry hook (a backend
                                object, as artcache-warm: ``backend="artcache"`` by name makes
                                torch import every backend module of its own at the first lookup,
                                about 0.3 s here, whatever the backend does)
artcache-pc-compile-name        ``torch.compile(model, backend="artcache", options={"precompile":
                                True})`` (the backend by name, through its entry point) on
                                artcache-pc-compile's store
artcache-pc-compile-guardfail   (model ``mlp-flag`` only) artcache-pc-compile on a copy of its store,
                                the flag flipped: the frame entry's guards fail, Dynamo traces
                                through the same ``torch.compile`` context (the graphs hit)
torch-aot-load                  ``torch.compiler.load_compiled_function`` of the file
                                ``torch.compile(fullgraph=True).aot_compile`` saved, with the
                                Inductor cache dir the save filled (where fullgraph works)
torch-aot-load-fresh            the same with a new empty Inductor cache dir
==============================  ================================================================

The cold runs that fill the stores and the file are untimed preparations (one per model).
Each child reports: **first call** (from before ``torch.compile`` / ``precompile`` /
the file load to the first result, synchronized on CUDA; Dynamo and artcache are imported
before the clock in every child, as in ``warm_start.py``), **to first result** (from the
parent's spawn of the child to that point) and the **steady step** (median of ``--steps``
calls after ``--warmup``).  Results: medians over ``--repeats``, repeats interleaved.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

THIS = Path(__file__).resolve()
REPO = THIS.parent.parent
sys.path.insert(0, str(THIS.parent))
from warm_start_models import BUILDERS  # noqa: E402
from _bytecode import compile_checkout  # noqa: E402

(FLOOR, AC_WARM, PRECOMPILE, PC_FALLBACK, PC_GUARDFAIL, PC_COMPILE, PC_COMPILE_NAME, PC_COMPILE_GUARDFAIL, AOT,
 AOT_FRESH) = (
    "floor", "artcache-warm", "artcache-precompile", "artcache-pc-fallback", "artcache-pc-guardfail",
    "artcache-pc-compile", "artcache-pc-compile-name", "artcache-pc-compile-guardfail", "torch-aot-load",
    "torch-aot-load-fresh")
VARIANTS = (FLOOR, AC_WARM, PRECOMPILE, PC_FALLBACK, PC_GUARDFAIL, PC_COMPILE, PC_COMPILE_NAME, PC_COMPILE_GUARDFAIL,
            AOT, AOT_FRESH)
FLAGGED = "mlp-flag"  # the model the guard-failure variants run on
GUARDFAILS = {PC_GUARDFAIL: PRECOMPILE, PC_COMPILE_GUARDFAIL: PC_COMPILE}  # each on a copy of that store
PREPARE = {AC_WARM: "artcache-cold", PRECOMPILE: "artcache-precompile-cold", PC_COMPILE: "artcache-pc-compile-cold",
           AOT: "torch-aot-save"}


# -- child ---------------------------------------------------------------------------------
def child_main(args: argparse.Namespace) -> None:
    import torch
    import torch._dynamo  # noqa: F401 - before the clock, in every child

    import artcache
    from artcache import frame_hook
    from artcache.frames import Precompiled

    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    workload = BUILDERS[args.model](device)
    example = _example_input(args.model, device)
    result: dict[str, Any] = {"variant": args.variant, "model": args.model}
    # The backend by name opens its own store: this process holds no Cache to count with.
    cache = artcache.Cache() if "artcache" in args.variant and args.variant != PC_COMPILE_NAME else None
    traced = _count_traces()
    torch.manual_seed(0)
    gc.collect()
    start = time.perf_counter()
    if args.variant == FLOOR:
        fn: Any = torch.compile(workload.model, backend="eager")
    elif args.variant in (AC_WARM, "artcache-cold"):
        fn = torch.compile(workload.model, backend=cache.backend())  # type: ignore[union-attr]
    elif args.variant in (PRECOMPILE, PC_FALLBACK, PC_GUARDFAIL, "artcache-precompile-cold"):
        if args.variant == PC_GUARDFAIL:
            workload.model.flag = False  # recorded with True: the frame's guard on it fails
        fn = artcache.precompile(workload.model, cache=cache)
    elif args.variant in (PC_COMPILE, PC_COMPILE_GUARDFAIL, "artcache-pc-compile-cold"):
        if args.variant == PC_COMPILE_GUARDFAIL:
            workload.model.flag = False
        fn = torch.compile(workload.model, backend=cache.backend(options={"precompile": True}))  # type: ignore[union-attr]
    elif args.variant == PC_COMPILE_NAME:
        fn = torch.compile(workload.model, backend="artcache", options={"precompile": True})
    elif args.variant == "torch-aot-save":
        if example is None:
            raise SystemExit(f"no aot_compile example input for {args.model}")
        # Traced under the step's grad mode (the MLP's step runs under no_grad): the saved
        # guards check it.  The module is external data (torch pickles no nn.Module).
        with torch.no_grad():
            compiled = torch.compile(workload.model.forward, fullgraph=True).aot_compile(((example,), {}))
        compiled.save_compiled_function(args.aot_file, external_data={"model": workload.model})
        fn = compiled
    else:  # torch-aot-load(-fresh)
        with open(args.aot_file, "rb") as f:
            fn = torch.compiler.load_compiled_function(f, external_data={"model": workload.model})
    out = workload.step(fn)
    sync()
    result["first_call_s"] = time.perf_counter() - start
    result["first_result_epoch"] = time.time()
    first = out.detach().float().cpu()
    for _ in range(args.warmup):
        workload.step(fn)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        workload.step(fn)
        sync()
        times.append(time.perf_counter() - t)
    result["steady_step_s"] = statistics.median(times) if times else None
    if workload.compare_to_eager:
        result["max_abs_err_vs_eager"] = float((first - workload.step(workload.model).detach().float().cpu()).abs().max())
    if isinstance(fn, Precompiled):
        result["replayed"] = fn.replayed
        result["fallbacks"] = dict(fn.reasons)
        result["refusals"] = fn.refusals
    result["dynamo_frames"] = traced[0]  # frames Dynamo's instruction translator traced
    result["dynamo_seen"] = torch._dynamo.utils.counters["frames"]["total"]  # frames its callback got
    if args.variant.startswith(PC_COMPILE):
        hooks = frame_hook.attached()
        result["replayed"] = sum(h.replayed for h in hooks)
        result["fallbacks"] = dict(sum((h.reasons for h in hooks), Counter()))
        result["refusals"] = {k: v for h in hooks for k, v in h.refusals.items()}
    if cache is not None:
        s = cache.stats()
        result["artcache"] = {"hits": s.hits, "misses": dict(s.misses), "saves": s.saves, "uncacheable": dict(s.uncacheable)}
    Path(args.result).write_text(json.dumps(result))


def _example_input(model: str, device: Any) -> Any:
    """The tensor the model's step passes first (for torch's ``aot_compile``)."""
    import torch

    if model in ("mlp", FLAGGED):
        return torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(device)
    return None


def _count_traces() -> list[int]:
    """A counter of the frames Dynamo's bytecode tracer runs on (``InstructionTranslator.run``,
    torch 2.13 and 2.11), in this child only: Dynamo's own frame counter also counts frames
    its callback skips without tracing (a function of a skipped file, a frame Dynamo already
    left to run as it is)."""
    from torch._dynamo import symbolic_convert

    count = [0]
    original = symbolic_convert.InstructionTranslator.run

    def run(self: Any) -> Any:
        count[0] += 1
        return original(self)

    symbolic_convert.InstructionTranslator.run = run  # type: ignore[method-assign]
    return count


def steady_main(args: argparse.Namespace) -> None:
    """``--steady``: per-call time of a replayed frame against the same graph behind
    Dynamo's own guards, in one process, interleaved in rounds: the wrapper, ``torch.compile``
    with precompile, and the plain artcache backend.  Wall time and this process's CPU time
    (with ``--threads 1`` the latter is what the call costs, whatever else runs on the
    machine).  Needs a store the cold runs filled under the same ``--threads``: ``--fill``
    makes one (run it once, in its own process, then run without it)."""
    import torch
    import torch._dynamo  # noqa: F401

    import artcache
    from artcache import frame_hook

    if args.threads:
        torch.set_num_threads(args.threads)  # part of the global state the entries guard
    workload = BUILDERS[args.models.split(",")[0]](torch.device(args.device))
    cache = artcache.Cache()
    paths = {"artcache-precompile": artcache.precompile(workload.model, cache=cache),
             "torch.compile precompile": torch.compile(workload.model, backend=cache.backend(options={"precompile": True})),
             "artcache (Dynamo's guards)": torch.compile(workload.model, backend=cache.backend())}
    for fn in paths.values():
        workload.step(fn)
        workload.step(fn)
    if args.fill:
        return
    traced = torch._dynamo.utils.counters["frames"]["total"]
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats * 10):
        for name, fn in paths.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                workload.step(fn)
            wall[name].append((time.perf_counter() - start) / args.steps)
            cpu[name].append((time.process_time() - start_cpu) / args.steps)
    base_wall = statistics.median(wall["artcache (Dynamo's guards)"])
    base_cpu = statistics.median(cpu["artcache (Dynamo's guards)"])
    for name in paths:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:28s} wall median {w * 1e3:.3f} ms ({100 * (w / base_wall - 1):+.1f}%) min "
              f"{min(wall[name]) * 1e3:.3f} ms; cpu median {c * 1e3:.3f} ms ({100 * (c / base_cpu - 1):+.1f}%)")
    wrapper = paths["artcache-precompile"]
    hooks = frame_hook.attached()
    print(f"wrapper: replayed {wrapper.replayed}, fallbacks {dict(wrapper.reasons) or 'none'}; torch.compile "
          f"precompile: replayed {sum(h.replayed for h in hooks)}, called frames replayed "
          f"{sum(h.called_replayed for h in hooks)}, guard trees {sum(h.trees for h in hooks)}, "
          f"fallbacks {[dict(h.reasons) for h in hooks]}; "
          f"Dynamo traced {traced} frames in the first calls (the plain path's), "
          f"{torch._dynamo.utils.counters['frames']['total'] - traced} after")


# -- parent --------------------------------------------------------------------------------
def spawn(args: argparse.Namespace, model: str, variant: str, root: Path, env: dict[str, str]) -> dict[str, Any] | None:
    result = root / f"result-{model}-{variant}-{time.monotonic_ns()}.json"
    command = [sys.executable, str(THIS), "--child", "--model", model, "--variant", variant, "--device", args.device,
               "--result", str(result), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--aot-file", str(root / f"aot-{model}.pt")]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "TORCHINDUCTOR_", "TRITON_"))}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
    spawned = time.time()
    proc = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        print(f"  {model} {variant}: FAILED: {' | '.join(tail)}", flush=True)
        return None
    data: dict[str, Any] = json.loads(result.read_text())
    data["to_first_result_s"] = data["first_result_epoch"] - spawned
    print(f"  {model:6s} {variant:26s} first call {data['first_call_s']:7.3f} s  to first result "
          f"{data['to_first_result_s']:7.3f} s  steady {data['steady_step_s'] * 1e3:8.3f} ms", flush=True)
    return data


def _dirs(root: Path, name: str) -> dict[str, str]:
    return {"TORCHINDUCTOR_CACHE_DIR": str(root / f"ind-{name}"), "TRITON_CACHE_DIR": str(root / f"triton-{name}")}


def run_model(args: argparse.Namespace, model: str, root: Path) -> dict[str, list[dict[str, Any]]]:
    stores = {AC_WARM: f"file://{root}/store-plain", PRECOMPILE: f"file://{root}/store-precompile",
              PC_COMPILE: f"file://{root}/store-pc-compile"}
    print(f"{model}: preparing (untimed)", flush=True)
    prepared = {}
    users = {AC_WARM: {AC_WARM, PC_FALLBACK}, PRECOMPILE: {PRECOMPILE, PC_GUARDFAIL},
             PC_COMPILE: {PC_COMPILE, PC_COMPILE_NAME, PC_COMPILE_GUARDFAIL}, AOT: {AOT, AOT_FRESH}}
    for variant, prep in PREPARE.items():
        if not users.get(variant, {variant}) & set(_chosen(args)):
            prepared[variant] = False  # no chosen variant reads what it would prepare
            continue
        env = {**_dirs(root, "aot" if variant == AOT else f"cold-{variant}"), "ARTCACHE_STORE": stores.get(variant, "")}
        prepared[variant] = spawn(args, model, prep, root, env) is not None
    chosen = _chosen(args)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        order = chosen[repeat % len(chosen):] + chosen[:repeat % len(chosen)]
        for variant in order:
            if (variant in (AOT, AOT_FRESH) and not prepared[AOT]) or (variant in GUARDFAILS and model != FLAGGED):
                continue
            dirs = _dirs(root, "aot") if variant == AOT else _dirs(root, f"{variant}-{repeat}")
            env = {**dirs, "ARTCACHE_STORE": stores.get(variant, f"file://{root}/store-unused-{repeat}")}
            if variant == PC_COMPILE_NAME:  # the same frame entry as artcache-pc-compile's
                if not prepared[PC_COMPILE]:
                    continue
                env["ARTCACHE_STORE"] = stores[PC_COMPILE]
            if variant == PC_FALLBACK:
                if not prepared[AC_WARM]:
                    continue
                # A fresh copy each time: the fallback records its frame in the store it ran on.
                copy = root / f"store-fallback-{model}-{repeat}"
                shutil.copytree(root / "store-plain", copy, symlinks=True)
                env["ARTCACHE_STORE"] = f"file://{copy}"
            if variant in GUARDFAILS:
                source = GUARDFAILS[variant]
                if not prepared[source]:
                    continue
                copy = root / f"store-{variant}-{model}-{repeat}"  # a fresh copy: nothing may change the next run's
                shutil.copytree(Path(stores[source].removeprefix("file://")), copy, symlinks=True)
                env["ARTCACHE_STORE"] = f"file://{copy}"
            data = spawn(args, model, variant, root, env)
            if data is not None:
                runs[variant].append(data)
    return runs


def _chosen(args: argparse.Namespace) -> tuple[str, ...]:
    """The variants to run, in the table's order (``--variants``; all by default)."""
    names = {v.strip() for v in args.variants.split(",") if v.strip()}
    unknown = names - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    return tuple(v for v in VARIANTS if not names or v in names)


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def render(args: argparse.Namespace, results: dict[str, dict[str, list[dict[str, Any]]]], started: str) -> str:
    import torch

    lines = [f"# Warm start with the precompile tier ({args.device})", "",
             f"Run {started} UTC; `python benchmarks/warm_start_precompile.py --models {','.join(results)} "
             f"--device {args.device} --repeats {args.repeats}"
             + (f" --variants {args.variants}" if args.variants else "") + "`.",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; Python "
             f"{platform.python_version()}. Each number: median over repeats, each run a fresh process.", ""]
    lines += ["| model | variant | runs | first call (s) | vs floor | to first result (s) | steady step (ms) | notes |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, runs in results.items():
        floor = _median(runs[FLOOR], "first_call_s")
        for variant in _chosen(args):
            mine = runs[variant]
            if not mine:
                lines.append(f"| {model} | {variant} | 0 | - | - | - | - | not available or failed |")
                continue
            first = _median(mine, "first_call_s")
            steady = _median(mine, "steady_step_s")
            spread = f"{min(r['first_call_s'] for r in mine):.3f}-{max(r['first_call_s'] for r in mine):.3f}"
            ratio = f"{first / floor:.2f}x" if floor and first else "-"
            notes = []
            if "replayed" in mine[0]:
                notes.append(f"replayed {[r['replayed'] for r in mine]}; fallbacks {mine[0]['fallbacks'] or 'none'}")
                if mine[0]["refusals"]:
                    notes.append(f"not precompilable: {mine[0]['refusals']}")
            notes.append(f"Dynamo traced {[r.get('dynamo_frames') for r in mine]} frames "
                         f"(its callback got {[r.get('dynamo_seen') for r in mine]})")
            if "artcache" in mine[0]:
                a = mine[0]["artcache"]
                notes.append(f"hits {a['hits']} misses {a['misses'] or 0} saves {a['saves']}")
            err = [r.get("max_abs_err_vs_eager") for r in mine if r.get("max_abs_err_vs_eager") is not None]
            if err:
                notes.append(f"max err vs eager {max(err):.1e}")
            lines.append(f"| {model} | {variant} | {len(mine)} | {first:.3f} ({spread}) | {ratio} | "
                         f"{_median(mine, 'to_first_result_s'):.3f} | {steady * 1e3:.3f} | {'; '.join(notes)} |")
    lines.append("")
    for model, runs in results.items():
        fallback, warm = _median(runs[PC_FALLBACK], "first_call_s"), _median(runs[AC_WARM], "first_call_s")
        if fallback and warm:
            lines.append(f"- {model}: the tier where it cannot serve (artcache-pc-fallback) / artcache-warm, "
                         f"first call: {fallback / warm:.3f}x")
        for variant in GUARDFAILS:
            guardfail = _median(runs[variant], "first_call_s")
            if guardfail and warm:
                lines.append(f"- {model}: a frame whose guards fail ({variant}) / artcache-warm, "
                             f"first call: {guardfail / warm:.3f}x")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="")
    parser.add_argument("--variants", default="", help="comma-separated subset of the variants (default: all)")
    parser.add_argument("--steady", action="store_true", help="per-call time in one process (ARTCACHE_STORE filled)")
    parser.add_argument("--threads", type=int, default=0, help="--steady: torch threads (0: torch's default)")
    parser.add_argument("--fill", action="store_true", help="--steady: fill ARTCACHE_STORE for it, then exit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--aot-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.steady:
        steady_main(args)
        return
    compile_checkout()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    results = {}
    with tempfile.TemporaryDirectory(prefix="artcache-precompile-bench-") as tmp:
        for model in args.models.split(","):
            results[model] = run_model(args, model, Path(tmp))
    report = render(args, results, started)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"warm_start_precompile_{args.device}.md")
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
