"""Compression benchmark, side by side in one run: the MLP entry stored with and without zstd.

    python benchmarks/compression_bench.py [--rounds 9] [--device cpu|cuda] [--out benchmarks/results/compression.md]

1. Cold: examples/mlp_demo.py compiles once into a store with ``ARTCACHE_COMPRESS=0`` and
   once into a store with compression on (each a fresh process, empty
   TORCHINDUCTOR_CACHE_DIR).
2. Stored bytes of each entry (blobs as stored plus the manifest), per blob role, and the
   size of an ``artcache export`` bundle of each store.
3. Lookup: ``Cache.lookup`` of each entry in this process, many times (files in the page
   cache): what decompression adds to fetching the entry.
4. Warm first call: rounds of fresh processes, uncompressed and compressed in turn (pairs),
   each with an empty TORCHINDUCTOR_CACHE_DIR, running the demo's model: the first call's
   wall time, the CPU time the process spent in it (``time.process_time``, all threads),
   and the time of the cache lookup within it (manifest and blobs read, checked and
   decompressed, the zstandard import included: all that compression changes in a warm
   start), min and median, and the median of the per-pair ratios.
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
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import zstandard  # noqa: E402

from artcache.archive import export_bundle  # noqa: E402
from artcache.cache import Cache  # noqa: E402
from artcache.config import Settings  # noqa: E402
from artcache.entry import decode_manifest  # noqa: E402
from artcache.store import LocalStore  # noqa: E402

VARIANTS = ("uncompressed", "zstd")


# The demo's model and input (examples/mlp_demo.py), timed in CPU seconds as well.
_WARM_CHILD = """
import json, sys, time
T0 = time.perf_counter()
import torch
import artcache
from examples.mlp_demo import make_mlp
device = sys.argv[1]
model = make_mlp().eval().to(device)
x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(device)
cache = artcache.Cache()
compiled = torch.compile(model, backend=cache.backend())
cpu, start = time.process_time(), time.perf_counter()
with torch.no_grad():
    out = compiled(x)
if out.is_cuda:
    torch.cuda.synchronize()
first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
with torch.no_grad():
    assert torch.allclose(out, model(x), atol=1e-5)
stats = cache.stats()
assert stats.hits == 1, stats
print(json.dumps({"first_call_s": first, "first_call_cpu_s": first_cpu, "lookup_s": stats.lookup_seconds,
                  "process_s": time.perf_counter() - T0}))
"""


def _demo(store: Path, inductor: Path, compress: bool, device: str, *, warm: bool = False) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "TORCHINDUCTOR_"))}
    env.update({"ARTCACHE_STORE": f"file://{store}", "TORCHINDUCTOR_CACHE_DIR": str(inductor),
                "PYTHONPATH": str(REPO), "ARTCACHE_COMPRESS": "1" if compress else "0"})
    argv = ["-c", _WARM_CHILD, device] if warm else [str(REPO / "examples" / "mlp_demo.py"), "--json", "--device", device]
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _entry(store: Path) -> tuple[str, dict[str, Any]]:
    local = LocalStore(store)
    [info] = list(local.iterate("ac/"))
    raw = local.get(info.key)
    assert raw is not None
    manifest = decode_manifest(raw)
    roles: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for ref in manifest.blobs:
        row = roles[ref.role]
        row[0] += 1
        row[1] += ref.raw_size if ref.encoding else ref.size
        row[2] += ref.size
    stored = sum(ref.size for ref in manifest.blobs) + len(raw)
    return info.key[3:], {"stored": stored, "manifest": len(raw), "roles": dict(roles),
                          "blobs": sum(ref.raw_size if ref.encoding else ref.size for ref in manifest.blobs)}


def _lookup_ms(store: Path, key: str, repeats: int) -> list[float]:
    cache = Cache(LocalStore(store), settings=Settings(store_urls=(f"file://{store}",)), strict=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert cache.lookup(key) is not None
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    return proc.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def _machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    command = "python benchmarks/compression_bench.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="artcache-zstd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        stores = {v: tmp / v for v in VARIANTS}
        cold = {v: _demo(stores[v], tmp / f"ind-cold-{v}", v == "zstd", args.device) for v in VARIANTS}
        entries = {v: _entry(stores[v]) for v in VARIANTS}
        assert entries["uncompressed"][0] == entries["zstd"][0]  # the same key either way
        key = entries["zstd"][0]
        bundles = {}
        for v in VARIANTS:
            export_bundle(LocalStore(stores[v]), tmp / f"{v}.acb")
            bundles[v] = (tmp / f"{v}.acb").stat().st_size
        lookups = {v: _lookup_ms(stores[v], key, args.lookups) for v in VARIANTS}
        warm: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for i in range(args.rounds):
            order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]  # alternate who goes first
            for v in order:
                warm[v].append(_demo(stores[v], tmp / f"ind-{v}-{i}", v == "zstd", args.device, warm=True))
            print(json.dumps({"round": i, **{v: warm[v][-1] for v in VARIANTS}}), flush=True)
    text = report(command.strip(), load, cold, entries, bundles, lookups, warm, args.device)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def report(command: str, load: float, cold: dict[str, Any], entries: dict[str, Any], bundles: dict[str, int],
           lookups: dict[str, list[float]], warm: dict[str, list[dict[str, float]]], device: str) -> str:
    u, z = entries["uncompressed"][1], entries["zstd"][1]
    gpu = f"; {torch.cuda.get_device_name()}" if device == "cuda" else ""
    lines = [
        f"# Compression benchmark (MLP entry, {device.upper()})",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()}.",
        "",
        f"- machine: {_machine()}{gpu}; 1-min load average at the start {load:.2f}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, zstandard {zstandard.__version__} "
        f"(libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})",
        f"- commit {_commit()}",
        "",
        "## Stored bytes of the entry (examples/mlp_demo.py)",
        "",
        "| | uncompressed | zstd | ratio |",
        "|---|---|---|---|",
        f"| entry (blobs as stored + manifest) | {u['stored']} | {z['stored']} | {u['stored'] / z['stored']:.2f}x |",
        f"| export bundle file | {bundles['uncompressed']} | {bundles['zstd']} | "
        f"{bundles['uncompressed'] / bundles['zstd']:.2f}x |",
        f"| manifest | {u['manifest']} | {z['manifest']} | |",
    ]
    for role in sorted(z["roles"]):
        count, raw, stored = z["roles"][role]
        lines.append(f"| blobs `{role}` ({count}) | {raw} | {stored} | {raw / stored:.2f}x |")
    def stats(values: list[float]) -> str:
        return f"{min(values):.3f} / {statistics.median(values):.3f}"
    lines += [
        "",
        f"## Lookup of the entry in one process (ms, min / median of {len(lookups['zstd'])}; files in the page cache)",
        "",
        "| uncompressed | zstd | difference of medians |",
        "|---|---|---|",
        f"| {stats(lookups['uncompressed'])} | {stats(lookups['zstd'])} | "
        f"{statistics.median(lookups['zstd']) - statistics.median(lookups['uncompressed']):+.3f} ms |",
        "",
        f"## Warm first call, fresh processes ({len(warm['zstd'])} pairs, order alternating; s, min / median)",
        "",
        "| | cold first call | warm first call | warm first call, CPU | lookup in the first call (ms) | warm whole process |",
        "|---|---|---|---|---|---|",
    ]
    columns = ("first_call_s", "first_call_cpu_s", "lookup_s", "process_s")
    for v in VARIANTS:
        lines.append(f"| {v} | {cold[v]['first_call_s']:.3f} | "
                     + " | ".join(stats([r[c] * (1000 if c == "lookup_s" else 1) for r in warm[v]]) for c in columns)
                     + " |")
    cells = []
    for c in columns:
        pairs = [z_[c] / u_[c] for u_, z_ in zip(warm["uncompressed"], warm["zstd"])]
        ratio = statistics.median(r[c] for r in warm["zstd"]) / statistics.median(r[c] for r in warm["uncompressed"])
        cells.append(f"pairs {statistics.median(pairs):.3f}x, medians {ratio:.3f}x")
    lines.append("| zstd / uncompressed | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
