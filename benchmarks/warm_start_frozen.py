"""Warm-start benchmark of frozen graphs (Inductor ``freezing=True``), and what they store.

    python benchmarks/warm_start_frozen.py [--models mlp,resnet50,gpt2] [--device cpu|cuda]
        [--repeats 3] [--steps 50] [--out FILE]

The variants, children and report of ``benchmarks/warm_start.py`` (floor, torch-cold,
torch-warm, artcache-cold, artcache-warm; each in a fresh process), run with
``TORCHINDUCTOR_FREEZING=1`` in every child: the models (default: the MLP and resnet50;
GPT-2 inference on request) run under ``torch.no_grad()`` in eval mode, so every compile freezes (torch-warm is torch's own FX-graph cache of the same
frozen graph).  Added to the report:

* **store bytes per entry**: each artcache-cold entry's manifest and blobs, as stored;
* **two entries sharing weights**: one fresh process compiles the model at two batch sizes
  (two graphs, two entries, one set of weights) into an empty store; the store's bytes
  against the sum of the two entries' own bytes (what it would hold without content
  addressing);
* **weights check**: the ``frozen_weights`` key factor (``artcache.weights.weights_digest``
  over the model's parameters and buffers, on their device) timed in a fresh process, first
  call and median of 20, against artcache-warm's first call.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

THIS = Path(__file__).resolve()
sys.path.insert(0, str(THIS.parent))
import warm_start as ws  # noqa: E402
from _bytecode import compile_checkout  # noqa: E402
from warm_start_report import AC_REMOTE, AC_WARM  # noqa: E402

FROZEN_MODELS = ("mlp", "resnet50")
# Batch sizes of the two graphs that share weights.
SHARED_BATCHES = {"mlp": (64, 32), "resnet50": (32, 16), "gpt2": (4, 2)}


def _input(model_name: str, batch: int, device: Any) -> Any:
    import torch

    if model_name == "gpt2":
        return torch.randint(0, 50257, (batch, 256), device=device)
    shape = (3, 224, 224) if model_name == "resnet50" else (256,)
    return torch.randn(batch, *shape, device=device)


def _store_bytes(url: str) -> dict[str, Any]:
    """Bytes per entry (manifest + blobs as stored) and the store's total."""
    from artcache.entries import EntryStore
    from artcache.store import open_store

    store = open_store(url)
    try:
        cache = EntryStore(store=store)
        entries = []
        for info in store.iterate("ac/"):
            loaded = cache.lookup(info.key.split("/", 1)[1])
            if loaded is None:
                continue
            blobs = {ref.digest: ref.size for ref in loaded.manifest.blobs}
            data = sum(ref.size for ref in loaded.manifest.blobs if ref.role == "data")
            entries.append({"bytes": info.size + sum(blobs.values()), "data_bytes": data,
                            "blobs": blobs, "manifest": info.size})
        total = sum(i.size for i in store.iterate("cas/")) + sum(i.size for i in store.iterate("ac/"))
        return {"entries": entries, "store_bytes": total}
    finally:
        store.close()


def shared_child(model_name: str, device_name: str, store: str) -> dict[str, Any]:
    """Compile ``model_name`` frozen at two batch sizes into ``store``; return its bytes."""
    import torch

    torch._inductor.config.freezing = True
    device = torch.device(device_name)
    workload = ws.BUILDERS[model_name](device)
    import artcache

    cache = artcache.Cache(store=store, strict=True)
    with torch.no_grad():
        for batch in SHARED_BATCHES[model_name]:
            torch._dynamo.reset()
            x = _input(model_name, batch, device)
            torch.compile(workload.model, backend=cache.backend(), dynamic=False)(x)
    weights = sum(t.numel() * t.element_size() for t in [*workload.model.parameters(), *workload.model.buffers()])
    return {"saves": cache.stats().saves, "weights_bytes": weights, **_store_bytes(store)}


def weights_child(model_name: str, device_name: str) -> dict[str, Any]:
    """Time the frozen-weights factor over the model's parameters and buffers."""
    import torch

    from artcache.weights import weights_digest

    device = torch.device(device_name)
    model = ws.BUILDERS[model_name](device).model
    tensors = [*model.parameters(), *model.buffers()]

    def timed() -> float:
        start = time.perf_counter()
        weights_digest(tensors)  # ends with a device-to-host copy: synchronized
        return time.perf_counter() - start

    first = timed()
    rest = [timed() for _ in range(20)]
    return {"first_s": first, "median_s": statistics.median(rest), "tensors": len(tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors)}


def _child(kind: str, model: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{kind}-{model}.json"
    command = [sys.executable, str(THIS), f"--{kind}-child", model, "--device", args.device, "--result", str(out)]
    if kind == "shared":
        command += ["--store", "file://" + str(scratch / f"shared-{model}")]
    env = ws._child_env(ws.Dirs(*ws._fresh_torch_dirs(scratch / f"{kind}-{model}-dirs"), "file://" + str(scratch / "unused")))
    proc = subprocess.run(command, env=env, cwd=ws.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
    return json.loads(out.read_text())


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def frozen_section(models: Sequence[str], runs: list[ws.Run], stores: dict[str, dict[str, Any]],
                   shared: dict[str, dict[str, Any]], checks: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["", "## Frozen graphs: store bytes and the weights check", ""]
    lines += ["| model | entries | bytes per entry (manifest + blobs) | of which tensor data | "
              "two entries, same weights: store bytes / sum of entries | weights (params + buffers) |",
              "|---|---|---|---|---|---|"]
    for model in models:
        entries = stores.get(model, {}).get("entries", [])
        per = ", ".join(_mib(e["bytes"]) for e in entries) or "n/a"
        data = ", ".join(_mib(e["data_bytes"]) for e in entries) or "n/a"
        two = shared.get(model, {})
        if "entries" in two and len(two["entries"]) == 2:
            summed = sum(e["bytes"] for e in two["entries"])
            pair = f"{_mib(two['store_bytes'])} / {_mib(summed)} ({two['store_bytes'] / summed:.0%})"
            weights = _mib(two["weights_bytes"])
        else:
            pair, weights = f"failed: {two.get('error', two)}", "n/a"
        lines.append(f"| {model} | {len(entries)} | {per} | {data} | {pair} | {weights} |")
    lines += ["", "| model | weights check: first call | median of 20 | tensors, bytes | "
              "artcache-warm first call (median) | check / warm first call |", "|---|---|---|---|---|---|"]
    for model in models:
        check = checks.get(model, {})
        warm = [r.data["first_call_s"] for r in runs if r.ok and r.model == model and r.variant == AC_WARM]
        if "first_s" not in check or not warm:
            lines.append(f"| {model} | failed: {check.get('error', 'no warm run')} | | | | |")
            continue
        w = statistics.median(warm)
        lines.append(f"| {model} | {check['first_s'] * 1e3:.2f} ms | {check['median_s'] * 1e3:.2f} ms | "
                     f"{check['tensors']}, {_mib(check['bytes'])} | {w:.3f} s | {check['first_s'] / w:.2%} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--shared-child")
    parser.add_argument("--weights-child")
    parser.add_argument("--store")
    known, rest = parser.parse_known_args(argv)
    os.environ["TORCHINDUCTOR_FREEZING"] = "1"  # every child compiles frozen graphs
    if known.shared_child or known.weights_child:
        child = argparse.ArgumentParser()
        child.add_argument("--device", default="cpu")
        child.add_argument("--result", required=True)
        cargs = child.parse_args(rest)
        sys.path.insert(0, str(ws.REPO))
        result = (shared_child(known.shared_child, cargs.device, known.store) if known.shared_child
                  else weights_child(known.weights_child, cargs.device))
        Path(cargs.result).write_text(json.dumps(result))
        return
    if "--models" not in rest:
        rest = ["--models", ",".join(FROZEN_MODELS), *rest]
    args = ws.parse_args(rest)
    if args.child or args.info:
        sys.path.insert(0, str(ws.REPO))
        (ws.child_main if args.child else ws.info_main)(args)
        return
    ws.THIS = THIS  # children are this file, which sets freezing before running warm_start's child
    compile_checkout()
    sys.path.insert(0, str(ws.REPO))
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t0 = time.perf_counter()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="artcache-frozen-"))
    root.mkdir(parents=True, exist_ok=True)
    info_file = root / "info.json"
    subprocess.run([sys.executable, str(THIS), "--info", "--device", args.device, "--result", str(info_file)], check=True, cwd=ws.REPO)
    info = json.loads(info_file.read_text())
    args.register_backend = not ws.artcache_entry_point_installed()
    skipped = {m: f"{', '.join(p for p in ws.MODELS[m] if importlib.util.find_spec(p) is None)} not installed"
               for m in args.models if any(importlib.util.find_spec(p) is None for p in ws.MODELS[m])}
    runnable = [m for m in args.models if m not in skipped]
    keep, args.keep = args.keep, True  # the stores are read after the runs
    load_before = os.getloadavg()[0]
    runs: list[ws.Run] = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        for index, model in enumerate(runnable):
            runs.extend(ws.run_model(args, repeat, model, repeat + index, root))
    stores = {m: _store_bytes("file://" + str(root / f"r0-{m}" / "artcache-store")) for m in runnable}
    extra = root / "extra"
    extra.mkdir(exist_ok=True)
    shared = {m: _child("shared", m, args, extra) for m in runnable}
    checks = {m: _child("weights", m, args, extra) for m in runnable}
    load = (load_before, os.getloadavg()[0])
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    variants = [v for v in ws.ALL_VARIANTS if v != AC_REMOTE or args.remote]
    report = ws.render(args, info, runs, skipped, variants, load, started, time.perf_counter() - t0)
    report = report.replace("# Warm-start benchmark:", "# Warm-start benchmark, frozen graphs (TORCHINDUCTOR_FREEZING=1):", 1)
    report = report.rstrip("\n") + "\n" + "\n".join(frozen_section(runnable, runs, stores, shared, checks)) + "\n"
    ws.write_report(report, args.out)


if __name__ == "__main__":
    main()
