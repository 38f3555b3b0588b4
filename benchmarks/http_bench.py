"""HTTP tier benchmark, side by side in one run, against an nginx (WebDAV) this script starts.

    python benchmarks/http_bench.py [--rounds 7] [--out benchmarks/results/http.md]

Get throughput for 4 KiB, 1 MiB and 16 MiB blobs (many distinct blobs per size), each
value stored once by ``HttpStore.put`` (payload + 28-byte integrity trailer):

* raw GET         ``urllib3`` GET of the same URL (the same stored bytes), read whole
                  with ``.data``, on a connection pool with the store's settings (one host,
                  ``maxsize=8``, 2 s timeouts, no retries); no check
* store get       ``HttpStore.get``: GET, payload and trailer read apart, XXH3-128 check
* raw parallel    the raw GETs of every key on a thread pool of 8 (the store's pool size)
* store get_many  ``HttpStore.get_many`` (the same fan-out, each value checked)

Rounds are interleaved (raw, store, raw parallel, store get_many, repeat); the table
gives the median and the best round of each.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import urllib3  # noqa: E402

from artcache.digest import content_digest  # noqa: E402
from artcache.store import cas_key  # noqa: E402
from artcache.store.http import DEFAULT_POOL, DEFAULT_TIMEOUT_S, HttpStore  # noqa: E402
from tests.nginx_server import NginxServer, nginx_binary  # noqa: E402
from store_bench import payloads as _payloads  # noqa: E402  (same folder: the same distinct blobs)

KIB, MIB = 1024, 1024 * 1024
SIZES = [(4 * KIB, 1024), (1 * MIB, 64), (16 * MIB, 6)]
COLUMNS = ("raw GET", "store get", "raw parallel", "store get_many")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(server: NginxServer, rounds: int) -> list[dict[str, object]]:
    base = server.url("open", "bench")
    store = HttpStore.from_url(base)
    raw = urllib3.connection_from_url(
        f"http://127.0.0.1:{server.port}", maxsize=DEFAULT_POOL, block=False,
        retries=urllib3.Retry(total=False, redirect=False),
        timeout=urllib3.Timeout(connect=DEFAULT_TIMEOUT_S, read=DEFAULT_TIMEOUT_S),
    )
    executor = ThreadPoolExecutor(DEFAULT_POOL)
    rows = []
    for size, count in SIZES:
        datas = _payloads(size, count)
        keys = [cas_key(content_digest(d)) for d in datas]
        store.put_many(dict(zip(keys, datas)))
        paths = [f"/open/bench/{k}" for k in keys]

        def raw_get(path: str) -> bytes:
            return raw.urlopen("GET", path).data  # type: ignore[no-any-return]

        times: dict[str, list[float]] = {name: [] for name in COLUMNS}
        for _ in range(rounds):
            times["raw GET"].append(_timed(lambda: [raw_get(p) for p in paths]))
            times["store get"].append(_timed(lambda: [store.get(k) for k in keys]))
            times["raw parallel"].append(_timed(lambda: list(executor.map(raw_get, paths))))
            times["store get_many"].append(_timed(lambda: store.get_many(keys)))
        assert store.get_many(keys) == dict(zip(keys, datas))  # and they were all hits
        assert [len(raw_get(p)) for p in paths[:1]] == [size + 28]  # the same stored bytes
        total = size * count
        row: dict[str, object] = {"size": size, "count": count}
        for name, ts in times.items():
            row[name] = total / statistics.median(ts) / MIB
            row[name + " best"] = total / min(ts) / MIB
        rows.append(row)
        print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        for key in keys:
            store.delete(key)
    executor.shutdown()
    store.close()
    return rows


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    return proc.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def _versions() -> str:
    binary = nginx_binary() or "nginx"
    nginx = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"1-min load average at the start {os.getloadavg()[0]:.2f}\n"
        f"- Python {platform.python_version()}, torch {torch.__version__}, urllib3 {urllib3.__version__}, {nginx}\n"
        f"- commit {_commit()}\n"
    )


def report(rows: list[dict[str, object]], rounds: int, command: str) -> str:
    def size_name(n: int) -> str:
        return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"

    lines = [
        "# HTTP tier benchmark",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()}.",
        "",
        _versions(),
        f"## Get throughput (MiB/s; median of {rounds} interleaved rounds, best round in brackets; "
        "loopback nginx on the same cores)",
        "",
        "| blob | blobs | raw GET | store get | ratio | raw parallel | store get_many | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def cell(name: str) -> str:
            return f"{float(r[name]):.0f} ({float(r[name + ' best']):.0f})"  # type: ignore[arg-type]

        rg, sg, rp, sm = (float(r[k]) for k in COLUMNS)  # type: ignore[arg-type]
        lines.append(
            f"| {size_name(int(r['size']))} | {r['count']} | {cell('raw GET')} | {cell('store get')} | {sg / rg:.2f}x "  # type: ignore[call-overload]
            f"| {cell('raw parallel')} | {cell('store get_many')} | {sm / rp:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    command = "python benchmarks/http_bench.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="artcache-http-bench-") as tmp_name:
        server = NginxServer(Path(tmp_name)).start()
        try:
            rows = throughput(server, args.rounds)
        finally:
            server.stop()
    text = report(rows, args.rounds, command.strip())
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
