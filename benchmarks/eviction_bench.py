"""Eviction benchmark: what the size cap (``ARTCACHE_MAX_SIZE``) adds to a save, on a store
of 100,000 blobs, side by side in one run.

    python benchmarks/eviction_bench.py [--entries 10000] [--blobs 10] [--rounds 3000]
                                        [--out benchmarks/results/eviction.md]

1. Build: ``--entries`` entries of ``--blobs`` blobs each (small, distinct blobs: the
   bookkeeping weighs most against the I/O when files are small) are saved through
   ``EntryStore`` into an uncapped store, which is then copied: store U (never capped, no
   index, as a user without a cap has it) and store C.
2. Index build: the first capped save on store C, which has no journal yet, scans the store
   and writes the journal (once per store).
3. Steady state, one process: saves of new entries (``--blobs`` blobs and a manifest each)
   alternate between store U (no cap) and store C (capped at its size when the phase
   starts, so it evicts from the first save on: every byte saved is matched by a byte
   evicted, the costliest regime).  Once with ``fsync=0`` and once with the default
   ``fsync=1``.  The mean includes the evictions (amortized); the median shows a save
   without one.
4. Fresh processes: the first save of a new process, capped (replays the journal) and not,
   alternating.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from artcache.config import Settings  # noqa: E402
from artcache.digest import content_digest  # noqa: E402
from artcache.entries import EntryStore  # noqa: E402
from artcache.entry import NewBlob  # noqa: E402
from artcache.store import LocalStore  # noqa: E402
from artcache.store import _nofollow as nofollow_module  # noqa: E402
from artcache.store import local as local_module  # noqa: E402
from artcache.store.eviction import JOURNAL_NAME  # noqa: E402

# Time spent deleting files (the file system's cost of eviction, apart from its
# bookkeeping): every deletion of the local store goes through unlink_regular (a check,
# then the unlink) or unlink_entry (the unlink, after eviction's own check), called from
# local.py or from _nofollow.ShardFiles.
UNLINK_SECONDS = [0.0]


def _timed(unlink):  # type: ignore[no-untyped-def]
    def timed(dir_fd: int, name: str) -> bool:
        start = time.perf_counter()
        try:
            return unlink(dir_fd, name)
        finally:
            UNLINK_SECONDS[0] += time.perf_counter() - start
    return timed


local_module.unlink_regular = _timed(local_module.unlink_regular)
nofollow_module.unlink_regular = _timed(nofollow_module.unlink_regular)
nofollow_module.unlink_entry = _timed(nofollow_module.unlink_entry)


class CountingStore(LocalStore):
    """Counts evictions that removed something, and the files they removed; times the
    evictions and, within them, the loads of the whole index (the first of a process)."""

    evictions = 0
    evicted_files = 0
    evict_seconds = 0.0
    load_seconds = 0.0

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        index = self._journal.index

        def timed_index():  # type: ignore[no-untyped-def]
            loading = self._journal._index is None
            start = time.perf_counter()
            try:
                return index()
            finally:
                if loading:
                    self.load_seconds += time.perf_counter() - start

        self._journal.index = timed_index  # type: ignore[method-assign]

    def _evict(self, cap: int, target: int, keep: frozenset[str]) -> list[str]:
        start = time.perf_counter()
        removed = super()._evict(cap, target, keep)
        self.evict_seconds += time.perf_counter() - start
        if removed:
            self.evictions += 1
            self.evicted_files += len(removed)
        return removed


def entry_store(store: LocalStore) -> EntryStore:
    return EntryStore(store, settings=Settings(store_urls=(store.url,), compress=False), strict=True)


def blobs_for(tag: str, n: int, size: int) -> list[NewBlob]:
    # Distinct, deterministic, incompressible-looking bytes (compression is off anyway).
    out = []
    for i in range(n):
        seed = content_digest(f"{tag}/{i}".encode()).encode()
        out.append(NewBlob("kernel", (seed * (size // len(seed) + 1))[: size - 8] + i.to_bytes(8, "little"), f"k{i}"))
    return out


def save(entries: EntryStore, tag: str, n: int, size: int, cpu: list[float] | None = None) -> float:
    """Wall seconds of one save; its CPU seconds (this thread, user + system: time spent
    waiting for the disk is not in it) are appended to ``cpu``."""
    blobs = blobs_for(tag, n, size)
    key = content_digest(f"entry/{tag}".encode())
    start, start_cpu = time.perf_counter(), time.thread_time()
    manifest = entries.save(key, blobs, factors={"graph": tag}, environment={})
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.thread_time() - start_cpu)
    assert manifest is not None
    return elapsed


def build(root: Path, entries: int, blobs: int, size: int) -> float:
    store = LocalStore(root, durable=False)
    es = entry_store(store)
    start = time.perf_counter()
    for i in range(entries):
        save(es, f"base{i}", blobs, size)
    store.close()
    return time.perf_counter() - start


def steady_state(root_u: Path, root_c: Path, *, durable: bool, rounds: int, blobs: int, size: int,
                 tag: str) -> dict[str, object]:
    uncapped = LocalStore(root_u, durable=durable)
    probe = LocalStore(root_c)
    cap = probe.disk_usage()
    probe.close()
    capped = CountingStore(root_c, durable=durable, max_size=cap)
    eu, ec = entry_store(uncapped), entry_store(capped)
    unlink_before = UNLINK_SECONDS[0]
    times: dict[str, list[float]] = {"no cap": [], "cap": []}
    cpu: dict[str, list[float]] = {"no cap": [], "cap": []}
    wall = {"no cap": 0.0, "cap": 0.0}
    for r in range(rounds):
        order = (("no cap", eu), ("cap", ec)) if r % 2 == 0 else (("cap", ec), ("no cap", eu))
        for name, es in order:
            times[name].append(save(es, f"{tag}-{name}-{r}", blobs, size, cpu[name]))
    for name in times:
        wall[name] = sum(times[name])
    out: dict[str, object] = {
        "cap_bytes": cap, "rounds": rounds, "durable": durable,
        "unlink_ms_per_save": (UNLINK_SECONDS[0] - unlink_before) / rounds * 1e3,
        "evictions": capped.evictions, "evicted_files": capped.evicted_files,
        "evict_ms_per_save": capped.evict_seconds / rounds * 1e3,
        "load_ms_per_save": capped.load_seconds / rounds * 1e3, "load_ms": capped.load_seconds * 1e3,
        "capped_store_after": capped.disk_usage(),
    }
    for name, ts in times.items():
        ms = sorted(t * 1e3 for t in ts)
        out[name] = {"mean": wall[name] / len(ts) * 1e3, "median": statistics.median(ms),
                     "cpu_mean": statistics.mean(cpu[name]) * 1e3, "cpu_median": statistics.median(cpu[name]) * 1e3,
                     "p99": ms[int(len(ms) * 0.99) - 1], "max": ms[-1]}
    uncapped.close()
    capped.close()
    return out


_CHILD = """
import sys, time, json
sys.path.insert(0, {repo!r})
from benchmarks.eviction_bench import entry_store, save
from artcache.store import LocalStore
store = LocalStore({root!r}, max_size={cap}, durable=False)
t = save(entry_store(store), {tag!r}, {blobs}, {size})
start = time.perf_counter()
index = store._journal.index() if {cap} else None
load = time.perf_counter() - start
print(json.dumps([t, load, len(index.files) if index else 0]))
"""


def first_save(root: Path, cap: int | None, tag: str, blobs: int, size: int) -> tuple[float, float, int]:
    """A new process's first save (s), then its load of the whole index (s) and its files."""
    code = _CHILD.format(repo=str(REPO), root=str(root), cap=cap, tag=tag, blobs=blobs, size=size)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    t, load, files = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(t), float(load), int(files)


def platform_costs(work: Path, size: int, n: int = 300) -> dict[str, float]:
    """This file system's own costs (us): write a file of ``size`` bytes and rename it into
    place, and delete such a file once its blocks are allocated (after a sync)."""
    d = work / "raw"
    d.mkdir()
    data = os.urandom(size)
    start = time.perf_counter()
    for i in range(n):
        with open(d / f"t{i}", "wb") as f:
            f.write(data)
        os.rename(d / f"t{i}", d / f"f{i}")
    create = (time.perf_counter() - start) / n * 1e6
    os.sync()
    start = time.perf_counter()
    for i in range(n):
        os.unlink(d / f"f{i}")
    unlink = (time.perf_counter() - start) / n * 1e6
    d.rmdir()
    return {"create": create, "unlink": unlink}


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


def _count_files(root: Path) -> tuple[int, int]:
    blobs = sum(len(os.listdir(d)) for d in (root / "cas").iterdir())
    manifests = sum(len(os.listdir(d)) for d in (root / "ac").iterdir())
    return blobs, manifests


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--durable-rounds", type=int, default=600)
    parser.add_argument("--fresh", type=int, default=5)
    parser.add_argument("--calibrate", type=int, default=300)
    parser.add_argument("--dir", default="", help="where the stores go (default: a new temp directory)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    command = "python benchmarks/eviction_bench.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0]
    work = Path(args.dir or tempfile.mkdtemp(prefix="evict-bench-"))
    root_u, root_c = work / "uncapped", work / "capped"
    for root in (root_u, root_c):
        shutil.rmtree(root, ignore_errors=True)

    root_b = work / "built"
    shutil.rmtree(root_b, ignore_errors=True)
    print(f"building {args.entries} entries x {args.blobs} blobs in {root_b}", flush=True)
    build_s = build(root_b, args.entries, args.blobs, args.size)
    # Both stores are copies: a store that was written entry by entry is slower to write
    # into than a fresh copy of it (measured here: about 2x), so neither is the original.
    shutil.copytree(root_b, root_u, symlinks=True)
    shutil.copytree(root_b, root_c, symlinks=True)
    shutil.rmtree(root_b)
    blobs_n, manifests_n = _count_files(root_c)
    print(f"built in {build_s:.1f}s: {blobs_n} blobs, {manifests_n} manifests", flush=True)

    # Calibration: both stores without a cap, alternating, to show what the two copies
    # differ by on their own.
    cal_u, cal_c = entry_store(LocalStore(root_u, durable=False)), entry_store(LocalStore(root_c, durable=False))
    cal: dict[str, list[float]] = {"U": [], "C": []}
    cal_cpu: dict[str, list[float]] = {"U": [], "C": []}
    for r in range(args.calibrate):
        for name, es in ((("U", cal_u), ("C", cal_c)) if r % 2 == 0 else (("C", cal_c), ("U", cal_u))):
            cal[name].append(save(es, f"cal-{name}-{r}", args.blobs, args.size, cal_cpu[name]) * 1e3)
    calibration = statistics.mean(cal["C"]) / statistics.mean(cal["U"])
    calibration_cpu = statistics.mean(cal_cpu["C"]) / statistics.mean(cal_cpu["U"])
    print(f"calibration (C/U, both uncapped): {calibration:.2f}", flush=True)

    # 2. The index build: the first capped save on a store without a journal.
    probe = LocalStore(root_c)
    size0 = probe.disk_usage()
    probe.close()
    assert not (root_c / JOURNAL_NAME).exists()
    index_store = LocalStore(root_c, durable=False, max_size=size0 * 2)
    index_build = save(entry_store(index_store), "index-build", args.blobs, args.size)
    index_store.close()
    journal_bytes = (root_c / JOURNAL_NAME).stat().st_size
    uncapped_first = save(entry_store(LocalStore(root_u, durable=False)), "uncapped-first", args.blobs, args.size)
    print(f"index build {index_build:.2f}s (journal {journal_bytes} bytes)", flush=True)

    # 3. Steady state.
    results = {}
    for durable, rounds in ((False, args.rounds), (True, args.durable_rounds)):
        label = "fsync=1" if durable else "fsync=0"
        print(f"steady state {label}: {rounds} rounds", flush=True)
        results[label] = steady_state(root_u, root_c, durable=durable, rounds=rounds, blobs=args.blobs,
                                      size=args.size, tag=label)
        print(json.dumps(results[label]), flush=True)

    # 4. Fresh processes (the cap with room to spare: the first save evicts nothing).
    probe = LocalStore(root_c)
    cap_now = int(probe.disk_usage() * 1.1)
    probe.close()
    fresh: dict[str, list[float]] = {"no cap": [], "cap": []}
    loads: list[float] = []
    for i in range(args.fresh):
        pairs = (("no cap", root_u, None), ("cap", root_c, cap_now))
        for name, root, cap in pairs if i % 2 == 0 else pairs[::-1]:
            t, load, files = first_save(root, cap, f"fresh-{name}-{i}", args.blobs, args.size)
            fresh[name].append(t * 1e3)
            if cap:
                loads.append(load)
    print(json.dumps(fresh), flush=True)
    raw = platform_costs(work, args.size + 28)
    print(json.dumps(raw), flush=True)
    final_blobs, final_manifests = _count_files(root_c)

    lines = [
        "# Eviction benchmark (local store size cap)",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()}.",
        "",
        f"- machine: {_machine()}; 1-min load average at the start {load:.2f} (the CPU is shared)",
        f"- Python {platform.python_version()}, torch {torch.__version__}",
        f"- commit {_commit()}",
        f"- store: {blobs_n} blobs and {manifests_n} manifests ({args.entries} entries of {args.blobs} blobs of "
        f"{args.size} bytes), {size0 / 1e6:.1f} MB; each measured save writes {args.blobs} new blobs and a "
        "manifest through `EntryStore.save`",
        "",
        "## Steady state, one process (ms per save; saves alternate between the two stores)",
        "",
        f"Stores U and C are copies of one built store. Calibration first, neither capped, {args.calibrate} "
        f"saves each, alternating: mean C / mean U = {calibration:.2f} in wall time, {calibration_cpu:.2f} in CPU "
        "time (what the two copies differ by on their own).",
        "",
        "Store C is capped at its size when the phase starts, so every byte saved is matched by a byte "
        "evicted. The mean is total time over saves, evictions included (amortized); the median is a "
        "save without an eviction.",
        "",
        "Wall time:",
        "",
        "| | saves each | no cap: mean / median / p99 | cap: mean / median / p99 | ratio of medians | ratio of means | cap: mean without the unlinks | ratio of means without the unlinks | evictions (files removed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        nc, c = res["no cap"], res["cap"]
        no_unlink = c["mean"] - res["unlink_ms_per_save"]
        lines.append(
            f"| {label} | {res['rounds']} | {nc['mean']:.3f} / {nc['median']:.3f} / {nc['p99']:.3f} | "
            f"{c['mean']:.3f} / {c['median']:.3f} / {c['p99']:.3f} | **{c['median'] / nc['median']:.2f}x** | "
            f"{c['mean'] / nc['mean']:.2f}x | {no_unlink:.3f} | **{no_unlink / nc['mean']:.2f}x** | "
            f"{res['evictions']} ({res['evicted_files']}) |"
        )
    lines += [
        "",
        "CPU time of the saving thread (user + system; waiting for the disk is not in it, which takes out "
        "most of the disk's noise):",
        "",
        "| | no cap: mean / median | cap: mean / median | ratio of medians | ratio of means |",
        "|---|---|---|---|---|",
    ]
    for label, res in results.items():
        nc, c = res["no cap"], res["cap"]
        lines.append(
            f"| {label} | {nc['cpu_mean']:.3f} / {nc['cpu_median']:.3f} | {c['cpu_mean']:.3f} / {c['cpu_median']:.3f} | "
            f"**{c['cpu_median'] / nc['cpu_median']:.2f}x** | **{c['cpu_mean'] / nc['cpu_mean']:.2f}x** |"
        )
    lines += [
        "",
        "Where the capped mean goes beyond the uncapped mean (wall ms per save, over the phase's saves): "
        "the evictions, split into the process's load of the whole index (its first eviction), the unlinks, "
        "and the rest of the evictions (choosing, checking with lstat, journaling the removals); what is left "
        "is the cap's cost in every save (journal lines, the total):",
        "",
        "| | cap mean - no cap mean | index load (ms, once) | unlinks | rest of the evictions | left: every save |",
        "|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        nc, c = res["no cap"], res["cap"]
        rest = res["evict_ms_per_save"] - res["load_ms_per_save"] - res["unlink_ms_per_save"]
        left = c["mean"] - nc["mean"] - res["evict_ms_per_save"]
        lines.append(
            f"| {label} | {c['mean'] - nc['mean']:.3f} | {res['load_ms_per_save']:.3f} ({res['load_ms']:.0f}) | "
            f"{res['unlink_ms_per_save']:.3f} | {rest:.3f} | {left:.3f} |"
        )
    lines += [
        "",
        "Largest single capped save (one eviction, about a tenth of the cap: the low-water mark): "
        + ", ".join(f"{label} {res['cap']['max']:.1f} ms" for label, res in results.items())
        + f". Capped store after the phases: {results['fsync=1']['capped_store_after'] / 1e6:.1f} MB "
        f"against a cap of {results['fsync=1']['cap_bytes'] / 1e6:.1f} MB; {final_blobs} blobs, "
        f"{final_manifests} manifests.",
        "",
        "## Once per store and once per process (ms)",
        "",
        "| | no cap | cap | ratio |",
        "|---|---|---|---|",
        f"| first capped save on a store without a journal (scans the store, writes the journal: once per store) | "
        f"{uncapped_first * 1e3:.1f} | {index_build * 1e3:.1f} | {index_build / uncapped_first:.0f}x |",
        f"| first save of a fresh process, median of {args.fresh} (the capped one replays the journal, "
        f"{journal_bytes / 1e6:.1f} MB at build) | {statistics.median(fresh['no cap']):.1f} | "
        f"{statistics.median(fresh['cap']):.1f} | "
        f"{statistics.median(fresh['cap']) / statistics.median(fresh['no cap']):.1f}x |",
        f"| a process's first eviction: loading the whole index (median of {len(loads)}) | | "
        f"{statistics.median(loads) * 1e3:.0f} | |",
        "",
        "## This file system's own costs, same run (us per file of "
        f"{args.size + 28} bytes)",
        "",
        f"- write and rename into place: {raw['create']:.0f}; delete once its blocks are allocated: "
        f"{raw['unlink']:.0f}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
