"""Redis tier benchmarks, side by side in one run, against a redis-server this script starts.

    python benchmarks/redis_bench.py [--rounds 5] [--warm-rounds 3] [--out benchmarks/results/redis.md]

1. Get throughput, for 4 KiB, 1 MiB and 64 MiB blobs (many distinct blobs per size):
   * raw GET         ``redis.Redis.get`` of the same bytes under a plain key (no check)
   * store get       ``RedisStore.get``: MGET of inline+header forms, XXH3 checksum check
   * raw pipeline    every key in one pipeline of GETs
   * store get_many  ``RedisStore.get_many``: one MGET, XXH3 checksum check of each
   Interleaved per round; medians over rounds.  64 MiB blobs are chunked (1 MiB chunks)
   in the store; raw GET fetches them as one value.
2. Warm start of examples/mlp_demo.py, each run a fresh process with an empty
   TORCHINDUCTOR_CACHE_DIR: artcache cold (writes local + Redis), then interleaved rounds of
   local warm (entry in the local tier) and remote warm (empty local tier, entry in Redis).
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import torch  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from artcache.digest import content_digest  # noqa: E402
from artcache.store import cas_key  # noqa: E402
from artcache.store.redis import RedisStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from store_bench import payloads as _payloads  # noqa: E402  (same folder: the same distinct blobs)

KIB, MIB = 1024, 1024 * 1024
SIZES = [(4 * KIB, 2048), (1 * MIB, 64), (64 * MIB, 3)]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(server: RedisServer, rounds: int) -> list[dict[str, object]]:
    raw = redis.Redis.from_url(server.url)
    store = RedisStore.from_url(f"{server.url}?prefix=bench")
    rows = []
    for size, count in SIZES:
        raw.flushdb()
        datas = _payloads(size, count)
        keys = [cas_key(content_digest(d)) for d in datas]
        raw_keys = [f"raw:{i}" for i in range(count)]
        for key, raw_key, data in zip(keys, raw_keys, datas):
            store.put(key, data)
            raw.set(raw_key, data)
        total = size * count
        times: dict[str, list[float]] = {"raw GET": [], "store get": [], "raw pipeline": [], "store get_many": []}

        def pipeline() -> object:
            pipe = raw.pipeline(transaction=False)
            for k in raw_keys:
                pipe.get(k)
            return pipe.execute()

        for _ in range(rounds):
            times["raw GET"].append(_timed(lambda: [raw.get(k) for k in raw_keys]))
            times["store get"].append(_timed(lambda: [store.get(k) for k in keys]))
            times["raw pipeline"].append(_timed(pipeline))
            times["store get_many"].append(_timed(lambda: store.get_many(keys)))
        assert store.get_many(keys) == dict(zip(keys, datas))  # and they were all hits
        mibps = {name: total / statistics.median(ts) / MIB for name, ts in times.items()}
        rows.append({"size": size, "count": count, **mibps})
        print(json.dumps({"size": size, **{k: round(v, 1) for k, v in mibps.items()}}), flush=True)
    raw.flushdb()
    store.close()
    return rows


def _demo(store_url: str, inductor_dir: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "TORCHINDUCTOR_"))}
    env.update({"ARTCACHE_STORE": store_url, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir), "PYTHONPATH": str(REPO)})
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mlp_demo.py"), "--json"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def warm_start(server: RedisServer, rounds: int, tmp: Path) -> dict[str, object]:
    remote = f"{server.url}?prefix=mlp"
    local = tmp / "local"
    cold = _demo(f"file://{local},{remote}", tmp / "ind-cold")
    runs: dict[str, list[dict[str, float]]] = {"local warm": [], "remote warm": []}
    for i in range(rounds):
        # Same tier configuration in both; only where the entry lies differs.
        runs["local warm"].append(_demo(f"file://{local},{remote}", tmp / f"ind-l{i}"))
        runs["remote warm"].append(_demo(f"file://{tmp / f'empty{i}'},{remote}", tmp / f"ind-r{i}"))
        print(json.dumps({"round": i, **{k: v[-1] for k, v in runs.items()}}), flush=True)
    med = {
        name: {m: statistics.median(r[m] for r in rs) for m in ("first_call_s", "process_s")}
        for name, rs in runs.items()
    }
    return {"cold": cold, "median": med, "runs": runs}


def _versions() -> str:
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()}, torch {torch.__version__}, redis-py {redis.__version__}, "
        f"hiredis {'yes' if HIREDIS_AVAILABLE else 'no'}\n"
        f"- {server}\n"
    )


def report(rows: list[dict[str, object]], warm: dict[str, object] | None, rounds: int) -> str:
    def size_name(n: int) -> str:
        return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"

    lines = [
        "# Redis tier benchmark",
        "",
        f"Generated by `benchmarks/redis_bench.py` on {datetime.date.today().isoformat()}.",
        "",
        _versions(),
        f"## Get throughput (MiB/s, median of {rounds} rounds; loopback redis-server on the same 2 cores)",
        "",
        "| blob | blobs | raw GET | store get | ratio | raw pipeline | store get_many | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rg, sg, rp, sm = (float(r[k]) for k in ("raw GET", "store get", "raw pipeline", "store get_many"))  # type: ignore[arg-type]
        lines.append(
            f"| {size_name(int(r['size']))} | {r['count']} | {rg:.0f} | {sg:.0f} | {sg / rg:.2f}x "  # type: ignore[call-overload]
            f"| {rp:.0f} | {sm:.0f} | {sm / rp:.2f}x |"
        )
    if warm is not None:
        med = warm["median"]  # type: ignore[index]
        lw, rw = med["local warm"], med["remote warm"]  # type: ignore[index]
        cold = warm["cold"]  # type: ignore[index]
        lines += [
            "",
            "## MLP warm start (examples/mlp_demo.py, fresh processes, empty TORCHINDUCTOR_CACHE_DIR each)",
            "",
            "| run | first call (s) | whole process (s) |",
            "|---|---|---|",
            f"| artcache cold (writes local + Redis) | {cold['first_call_s']:.3f} | {cold['process_s']:.3f} |",
            f"| local warm (median) | {lw['first_call_s']:.3f} | {lw['process_s']:.3f} |",
            f"| remote warm, empty local tier (median) | {rw['first_call_s']:.3f} | {rw['process_s']:.3f} |",
            f"| remote / local | {rw['first_call_s'] / lw['first_call_s']:.2f}x | {rw['process_s'] / lw['process_s']:.2f}x |",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm-rounds", type=int, default=3)
    parser.add_argument("--skip-warm", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="artcache-redis-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = RedisServer(tmp).start()
        try:
            rows = throughput(server, args.rounds)
            warm = None if args.skip_warm else warm_start(server, args.warm_rounds, tmp)
        finally:
            server.stop()
    text = report(rows, warm, args.rounds)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
