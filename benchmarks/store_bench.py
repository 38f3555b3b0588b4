"""Local store throughput against raw file I/O of the same bytes, in the same run.

    python benchmarks/store_bench.py [--rounds 5] [--dir /path/on/the/cache/disk] [--out FILE]

For each blob size (4 KiB, 1 MiB, 64 MiB) and each round, a fresh directory receives
many distinct files (so reads are not all served from CPU caches), written and read
several ways, interleaved so that drift hits all of them alike (writes file by file,
reads phase by phase):

* raw write          ``open(p, "wb").write(data)``: no fsync, no rename
* raw durable write  temp file, write, fsync, ``os.replace`` (what a careful writer does)
* both raw writes again, into the store's own layout (``<2 hex>/<64 hex>`` under 256 shard
  directories, created on first use) instead of one flat directory: what the sharding the
  store must have costs by itself, so the store's own overhead can be told apart from it
* store put          ``LocalStore(durable=False)``: temp file + xxh3 trailer + rename
* store durable put  ``LocalStore(durable=True)``: the same plus fsync (the default)
* raw read           ``open(p, "rb").read()``
* store get          ``LocalStore.get``: read + xxh3 verification of every byte

Reads come from the page cache (the files were just written), which is the warm-start
case and the hardest one for the store: verification has no disk latency to hide behind.
Throughput is payload bytes / time spent in that side's calls; each number is the median
over rounds.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from artcache.digest import checksum  # noqa: E402
from artcache.store import LocalStore, cas_key  # noqa: E402

KIB, MIB = 1024, 1024 * 1024
# (size, files per round): about 64 MiB+ of distinct data per round and size.
SIZES = [(4 * KIB, 4096), (1 * MIB, 96), (64 * MIB, 4)]


def payloads(size: int, count: int) -> list[bytes]:
    base = bytearray(os.urandom(size))
    out = []
    for i in range(count):
        base[:8] = i.to_bytes(8, "little")  # distinct content, so distinct cas keys
        out.append(bytes(base))
    return out


def timed(fn: Callable[[], None]) -> float:
    # Flush the previous phase's dirty pages first (untimed), so that its writeback does
    # not land on whichever phase happens to run next.
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def raw_durable_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = tmp_dir / (path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sharded_paths(root: Path, keys: list[str]) -> list[Path]:
    """The store's layout for ``keys`` under ``root``: ``<first 2 hex>/<64 hex>``."""
    return [root / key[4:6] / key[4:] for key in keys]


def interleaved(ops: dict[str, Callable[[int], object]], count: int) -> dict[str, float]:
    """Seconds each op spent on items ``0..count-1``, run item by item in rotating order.

    Writes of whole phases one after another let whatever slows the disk for a while
    (writeback of the previous phase, a journal commit, the first allocation in a fresh
    block group, a neighbour on the VM) land on one side only: single-phase ratios swung
    from 0.57x to 0.91x between runs.  Interleaving item by item spreads it over all sides.
    """
    os.sync()  # untimed: start from a clean page cache
    spent = dict.fromkeys(ops, 0.0)
    names = list(ops)
    clock = time.perf_counter
    for i in range(count):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            ops[name](i)
            spent[name] += clock() - start
    return spent


def raw_read(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            f.read()


def raw_read_and_hash(paths: list[Path]) -> None:
    """The floor of any verified read: a raw read plus one xxh3 pass over the bytes."""
    for path in paths:
        with open(path, "rb") as f:
            checksum(f.read())


def store_put(store: LocalStore, keys: list[str], datas: list[bytes]) -> None:
    for key, data in zip(keys, datas):
        store.put(key, data)


def store_get(store: LocalStore, keys: list[str]) -> None:
    get = store.get
    for key in keys:
        if get(key) is None:
            raise SystemExit(f"benchmark bug: {key} missing")


def bench_size(root: Path, size: int, count: int, rounds: int) -> dict[str, list[float]]:
    datas = payloads(size, count)
    keys = [cas_key(hashlib.sha256(d).hexdigest()) for d in datas]
    total_mb = size * count / 1e6
    rates: dict[str, list[float]] = {
        k: [] for k in ("raw_w", "raw_dw", "raws_w", "raws_dw", "st_w", "st_dw", "raw_r", "st_r", "rawh_r")
    }
    for round_ in range(rounds):
        work = root / f"s{size}" / f"r{round_}"
        dirs = {name: work / name for name in ("raw", "rawd", "rawd_tmp", "raws", "rawsd", "store", "stored")}
        for d in dirs.values():
            d.mkdir(parents=True)
        raw_paths = [dirs["raw"] / f"{i:06d}" for i in range(count)]
        rawd_paths = [dirs["rawd"] / f"{i:06d}" for i in range(count)]
        raws_paths = sharded_paths(dirs["raws"], keys)
        rawsd_paths = sharded_paths(dirs["rawsd"], keys)
        fast = LocalStore(dirs["store"], durable=False)
        durable = LocalStore(dirs["stored"], durable=True)
        shards: set[Path] = set()

        def into_shard(write: Callable[..., None], path: Path, *args: object) -> None:
            if path.parent not in shards:  # created on first use, as the store does
                path.parent.mkdir(exist_ok=True)
                shards.add(path.parent)
            write(path, *args)

        fast_ops: dict[str, Callable[[int], object]] = {
            "raw_w": lambda i: raw_write(raw_paths[i], datas[i]),
            "st_w": lambda i: fast.put(keys[i], datas[i]),
            "raws_w": lambda i: into_shard(raw_write, raws_paths[i], datas[i]),
        }
        durable_ops: dict[str, Callable[[int], object]] = {
            "raw_dw": lambda i: raw_durable_write(rawd_paths[i], datas[i], dirs["rawd_tmp"]),
            "st_dw": lambda i: durable.put(keys[i], datas[i]),
            "raws_dw": lambda i: into_shard(raw_durable_write, rawsd_paths[i], datas[i], dirs["rawd_tmp"]),
        }
        for ops in (fast_ops, durable_ops):
            for name, seconds in interleaved(ops, count).items():
                rates[name].append(total_mb / seconds)
        # Reads: raw, raw+hash and store rotate, three times each, on files of the
        # non-durable run.
        for i in range(3):
            trio = [
                ("raw_r", lambda: raw_read(raw_paths)),
                ("st_r", lambda: store_get(fast, keys)),
                ("rawh_r", lambda: raw_read_and_hash(raw_paths)),
            ]
            for name, fn in trio[i:] + trio[:i]:
                rates[name].append(total_mb / timed(fn))
    # Deleting is not free on this disk (mount option "discard"): do it after the timing.
    shutil.rmtree(root / f"s{size}")
    os.sync()
    return rates


def small_get_rate(root: Path, rounds: int, count: int = 4096) -> tuple[float, float]:
    """gets/s of 4 KiB blobs through the store, and raw reads/s of the same files."""
    datas = payloads(4 * KIB, count)
    keys = [cas_key(hashlib.sha256(d).hexdigest()) for d in datas]
    store = LocalStore(root / "small", durable=False)
    store_put(store, keys, datas)
    paths = [store._path(k) for k in keys]
    store_rates, raw_rates = [], []
    for i in range(rounds):
        if i % 2:
            raw_rates.append(count / timed(lambda: raw_read(paths)))
        store_rates.append(count / timed(lambda: store_get(store, keys)))
        if not i % 2:
            raw_rates.append(count / timed(lambda: raw_read(paths)))
    shutil.rmtree(root / "small")
    return statistics.median(store_rates), statistics.median(raw_rates)


def fmt_size(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="artcache-bench-", dir=args.dir))
    try:
        results = {}
        for size, count in SIZES:
            rounds = args.rounds if size < 64 * MIB else max(3, args.rounds // 2)
            print(f"{fmt_size(size)} x {count} files, {rounds} rounds ...", file=sys.stderr, flush=True)
            results[size] = bench_size(root, size, count, rounds)
        small_store, small_raw = small_get_rate(root, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load = (load_before, os.getloadavg()[0])
    report = render(results, small_store, small_raw, args.rounds, load)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


def render(samples: dict[int, dict[str, list[float]]], small_store: float, small_raw: float, rounds: int, load: tuple[float, float]) -> str:
    import torch  # only for the version line of the report

    results = {size: {k: statistics.median(v) for k, v in r.items()} for size, r in samples.items()}

    try:
        import xxhash

        xx = xxhash.VERSION
    except ImportError:  # the report still renders without it; the store itself needs it
        xx = "?"
    lines = [
        "# Store benchmark: LocalStore vs raw file I/O",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, xxhash {xx}",
        "- command: `python benchmarks/store_bench.py --out benchmarks/results/store.md`",
        f"- 1-min load average at start / end: {load[0]:.2f} / {load[1]:.2f} (other work on the"
        " machine shows up as spread in the range columns; compare medians, and ranges for noise)",
        f"- median of {rounds} rounds ({max(3, rounds // 2)} for 64 MiB); writes interleaved file by"
        " file, sides rotating first; reads: whole phases, 3 per round, sides rotating; `os.sync()` (untimed) before every timed phase;"
        " files per round: " + ", ".join(f"{fmt_size(s)} x {n}" for s, n in SIZES),
        "- reads are page-cache reads of just-written files (the warm-start case); every store get"
        " verifies the xxh3-128 trailer of every byte it returns",
        "",
        "MB/s = 10^6 payload bytes per second. Target: store >= 0.8x raw for blobs of 1 MiB and up.",
        "",
        "| blob | operation | raw MB/s | store MB/s | store / raw | >= 0.8x | raw range | store range |",
        "|---|---|---:|---:|---:|:---:|---:|---:|",
    ]
    pairs = [
        ("write, no fsync (raw `write` vs put durable=False)", "raw_w", "st_w"),
        ("write, fsync + rename (raw vs put durable=True)", "raw_dw", "st_dw"),
        ("write, no fsync, raw into the store's sharded layout", "raws_w", "st_w"),
        ("write, fsync + rename, raw into the store's sharded layout", "raws_dw", "st_dw"),
        ("read (raw `read` vs verified get)", "raw_r", "st_r"),
    ]
    for size, r in results.items():
        for label, raw_k, st_k in pairs:
            ratio = r[st_k] / r[raw_k]
            met = ("yes" if ratio >= 0.8 else "**no**") if size >= MIB else "n/a"
            spread = [f"{min(samples[size][k]):,.0f}-{max(samples[size][k]):,.0f}" for k in (raw_k, st_k)]
            lines.append(
                f"| {fmt_size(size)} | {label} | {r[raw_k]:,.0f} | {r[st_k]:,.0f} | {ratio:.2f}x | {met}"
                f" | {spread[0]} | {spread[1]} |"
            )
    lines += [
        "",
        "Verification floor: a raw read followed by one xxh3-128 pass (what any verified read must"
        " do at least) vs the store get: "
        + ", ".join(
            f"{fmt_size(s)}: floor {r['rawh_r']:,.0f} MB/s = {r['rawh_r'] / r['raw_r']:.2f}x raw,"
            f" store = {r['st_r'] / r['rawh_r']:.2f}x floor"
            for s, r in results.items()
        )
        + ".",
        "",
        "Layout cost: raw writes into the store's 256-shard layout vs into one flat directory"
        " (no store code involved): "
        + ", ".join(
            f"{fmt_size(s)} {r['raws_w'] / r['raw_w']:.2f}x (no fsync), {r['raws_dw'] / r['raw_dw']:.2f}x (fsync)"
            for s, r in results.items()
        )
        + ".",
        "",
        "Cross-check (not like for like): store put durable=True vs raw write without fsync: "
        + ", ".join(f"{fmt_size(s)} {r['st_dw'] / r['raw_w']:.2f}x" for s, r in results.items())
        + ". The default store fsyncs; an fsync costs what it costs, for raw writes too.",
        "",
        "## Small gets (4 KiB blobs)",
        "",
        "| | per second |",
        "|---|---:|",
        f"| store get (verified) | {small_store:,.0f} |",
        f"| raw open+read | {small_raw:,.0f} |",
        "",
        f"Target >= 5,000 gets/s: {'met' if small_store >= 5000 else '**not met**'}"
        f" ({small_store / small_raw:.2f}x raw).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
