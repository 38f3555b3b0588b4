"""Parallel cold starts: N processes start the same model at once on an empty cache.

    python benchmarks/parallel_cold.py [--procs 8] [--device cpu|cuda] [--repeats 2] [--out FILE]

A job that starts 8 ranks, or a CI matrix that starts the same model 8 times, misses the
same graphs at the same moment.  Side by side in one run, each variant a set of fresh
processes that import and build first, then start the compile together (a shared "go"):

==================  =======================================================================
solo                one process, ``backend="artcache"``, empty store: one cold compile
torch               N processes, ``backend="inductor"``, one shared empty
                    ``TORCHINDUCTOR_CACHE_DIR`` (torch's behaviour: each process compiles)
artcache            N processes, ``backend="artcache"``, one shared empty store, single-flight
                    on (the default): one compiles, the others wait and load its entry
artcache-sf-off     the same with ``ARTCACHE_SINGLE_FLIGHT=0``
==================  =======================================================================

Reported per variant: the time from "go" until every process has its first result (the
slowest process), its ratio to *solo*, and how many processes saved an entry.  The target
for *artcache*: at most 1.3x solo.  The model is the main job's MLP
(``examples/mlp_demo.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bytecode import compile_checkout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
VARIANTS = ("solo", "torch", "artcache", "artcache-sf-off")


def child_main(args: argparse.Namespace) -> None:
    import torch
    import torch._dynamo  # noqa: F401  (before the go, like every import)

    sys.path.insert(0, str(REPO))
    from examples.mlp_demo import make_mlp

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_mlp().to(device).eval()
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(device)
    if args.backend == "artcache":
        import artcache

        cache = artcache.Cache()
        compiled = torch.compile(model, backend=cache.backend())
    else:
        cache = None
        compiled = torch.compile(model, backend="inductor")
    print("ready", flush=True)
    sys.stdin.readline()
    with torch.no_grad():
        out = compiled(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    done = time.time()
    saves = cache.stats().saves if cache is not None else None
    print(json.dumps({"done_epoch": done, "saves": saves, "sum": float(out.float().sum())}), flush=True)


def run_variant(variant: str, procs: int, device: str, root: Path) -> dict[str, Any]:
    n = 1 if variant == "solo" else procs
    backend = "inductor" if variant == "torch" else "artcache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "TORCHINDUCTOR_", "TRITON_"))}
    env.update({"PYTHONPATH": str(REPO), "ARTCACHE_STORE": f"file://{root / 'store'}",
                "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "TRITON_CACHE_DIR": str(root / "triton")})
    if variant == "artcache-sf-off":
        env["ARTCACHE_SINGLE_FLIGHT"] = "0"
    children = []
    for _ in range(n):
        children.append(subprocess.Popen(
            [sys.executable, str(THIS), "--child", "--backend", backend, "--device", device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    for child in children:  # every process imported torch and built its model
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{variant}: child failed before the start: {child.stderr.read()[-2000:] if child.stderr else ''}")
    go = time.time()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=3600)
        if child.returncode != 0:
            raise RuntimeError(f"{variant}: child failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "variant": variant, "procs": n,
        "all_first_results_s": max(r["done_epoch"] for r in results) - go,
        "first_first_result_s": min(r["done_epoch"] for r in results) - go,
        "saves": sum(r["saves"] or 0 for r in results) if backend == "artcache" else None,
        "same_outputs": len({round(r["sum"], 4) for r in results}) == 1,
    }


def report(args: argparse.Namespace, runs: list[dict[str, Any]], started: str, took_s: float) -> str:
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    med = {v: statistics.median(r["all_first_results_s"] for r in rs) for v, rs in by.items() if rs}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "artcache"], capture_output=True, text=True).stdout.strip()
    import torch

    lines = [
        "# Parallel cold starts: N processes, one model, an empty cache",
        "",
        f"- date: {started} (took {took_s / 60:.1f} min)",
        f"- machine: {os.cpu_count()} CPU cores, {platform.machine()}, {platform.platform()}"
        + (f"; GPU {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""),
        f"- versions: python {platform.python_version()}, torch {torch.__version__}; artcache tree {commit}"
        + (" (with uncommitted changes under artcache/)" if dirty else ""),
        f"- command: `python benchmarks/parallel_cold.py --procs {args.procs} --device {args.device} --repeats {args.repeats}`",
        f"- model: examples/mlp_demo.py; {args.procs} processes per parallel variant; repeats: {args.repeats}"
        " (median; range in parentheses); variants interleaved per repeat",
        "",
        "Time from a shared start (every process has imported torch and built the model) until"
        " every process has its first result:",
        "",
        "| variant | processes | all first results (s) | / solo | entries saved | outputs equal |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for v in VARIANTS:
        rs = by[v]
        if not rs:
            continue
        times = [r["all_first_results_s"] for r in rs]
        saves = "/".join(str(r["saves"]) for r in rs) if rs[0]["saves"] is not None else "n/a"
        lines.append(
            f"| {v} | {rs[0]['procs']} | {med[v]:.2f} ({min(times):.2f}-{max(times):.2f}) | "
            f"{med[v] / med['solo']:.2f}x | {saves} | {'yes' if all(r['same_outputs'] for r in rs) else '**no**'} |"
        )
    lines += ["", f"Target: artcache at most 1.3x solo: {'met' if med['artcache'] <= 1.3 * med['solo'] else '**not met**'}"
              f" ({med['artcache'] / med['solo']:.2f}x).", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="artcache", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    compile_checkout()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    runs = []
    for repeat in range(args.repeats):
        order = VARIANTS[repeat % len(VARIANTS):] + VARIANTS[: repeat % len(VARIANTS)]
        for variant in order:
            with tempfile.TemporaryDirectory(prefix="artcache-parallel-") as tmp:
                run = run_variant(variant, args.procs, args.device, Path(tmp))
            print(json.dumps(run), flush=True)
            runs.append(run)
    text = report(args, runs, started, time.perf_counter() - t0)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
