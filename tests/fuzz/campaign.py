"""The fuzzing campaign: seeded programs, each cold in one process and warm in a fresh one,
with the run-time condition kept or changed between the two (``programs.py``,
``conditions.py``, ``run.py``).

    python -m tests.fuzz.campaign --seeds 0:1000 [--jobs 16] [--device cpu|cuda] [--batch 10]
        [--workdir DIR] [--out summary.json] [--reproducers tests/fuzz/reproducers]
    python -m tests.fuzz.campaign --merge a.json b.json ... --out all.json [--markdown FILE]

Seeds are cut into batches; each batch runs fresh processes on one store: ``cold``,
``warm`` (unchanged condition, compile tripwires on), ``changed`` (changed condition,
tripwires on: a miss is the miss artcache counts, then the compile trips) and, for
programs that hit under a changed condition, ``fresh`` (a plain Inductor compile under
the warm condition, which the hit must equal).
``--jobs`` batches run at once.  Outcomes per program:

===================  ====================================================================
hit                  unchanged condition: served from the store, bitwise equal to cold
miss-changed         changed condition: the warm process missed (the compile that follows,
                     a plain Inductor compile, trips the tripwires there)
hit-unaffected       changed condition that provably cannot change this program (the
                     thread count of a program with no CPU code): hit, bitwise equal to a
                     fresh compile under the warm condition
uncacheable          artcache declined to cache the program (its reason is counted)
invalid              the program fails in eager under its condition (not a test of the cache)
compile-fails-too    the cold compile failed, and so did a plain Inductor compile
no-graph             Dynamo made no graph (the program returns an input unchanged): nothing
                     was looked up, nothing could be stale
===================  ====================================================================

Failures: ``stale-hit`` (a hit where the condition changes the program), ``warm-differs``
(not bitwise equal to cold or to the fresh compile), ``warm-missed`` (unchanged condition
but compiled again: a tripwire or a miss), ``warm-error``, ``compile-lost`` (the cold
compile failed where plain Inductor works), ``crashed`` (a process died in the program).
Each failure is written as a reproducer (the program, its condition, the outcome) that
``tests/test_fuzz_reproducers.py`` replays.  The summary JSON holds one record per seed,
so summaries from several machines merge by seed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import conditions
from .programs import generate

REPO = Path(__file__).resolve().parents[2]
FAILURES = ("stale-hit", "warm-differs", "warm-missed", "warm-error", "compile-lost", "crashed")


def _env(inductor_dir: Path, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "TORCHINDUCTOR_"))}
    env.update(PYTHONPATH=str(REPO), ARTCACHE_STORE=f"file://{store}", TORCHINDUCTOR_CACHE_DIR=str(inductor_dir),
               TRITON_CACHE_DIR=str(inductor_dir / "triton"), TORCHINDUCTOR_COMPILE_THREADS="1")
    return env


def parse_seeds(text: str) -> list[int]:
    """``"0:100"`` or ``"7,12,40:50"``: seeds in the order given, each range's stop excluded."""
    seeds: list[int] = []
    for part in text.split(","):
        start, sep, stop = part.partition(":")
        seeds.extend(range(int(start), int(stop)) if sep else [int(start)])
    return seeds


def run_phase(phase: str, programs: list[dict[str, Any]], work: Path, device: str, timeout: float) -> dict[int, dict[str, Any]]:
    """Run ``phase`` over ``programs`` in fresh processes until each has a record; a
    process that dies is restarted on the rest, the program it died on recorded as crashed."""
    import torch

    results = work / phase
    results.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while left := [p for p in programs if not (results / f"{p['seed']}.pt").exists()]:
        attempt += 1
        listing = work / f"{phase}-{attempt}.json"
        listing.write_text(json.dumps(left))
        log_path = work / f"{phase}-{attempt}.log"
        command = [sys.executable, "-m", "tests.fuzz.run", "--phase", phase, "--programs", str(listing),
                   "--results", str(results), "--device", device]
        with log_path.open("w") as log:
            try:
                code: Any = subprocess.run(command, cwd=REPO, env=_env(work / f"inductor-{phase}-{attempt}", work / "store"),
                                           stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        current = results / "current"
        if code != 0 or current.exists():
            seed = int(current.read_text()) if current.exists() else left[0]["seed"]
            torch.save({"seed": seed, "phase": phase, "crashed": f"exit {code}",
                        "log": log_path.read_text(errors="replace")[-2000:]}, results / f"{seed}.pt")
            current.unlink(missing_ok=True)
    return {p["seed"]: torch.load(results / f"{p['seed']}.pt", weights_only=True) for p in programs}  # our own files


def same_bits(a: Any, b: Any) -> bool:
    import torch

    if a is None or b is None or not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    return bool(torch.equal(_bytes_of(a), _bytes_of(b)))


def _bytes_of(t: Any) -> Any:
    """A tensor's values as bytes.  Copied into a new tensor first: ``contiguous()`` keeps
    a size-1 dimension's odd stride, which a view as bytes refuses."""
    import torch

    dense = torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
    return dense.reshape(-1).view(torch.uint8)


def results_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["grad"] == b["grad"] and len(a["values"]) == len(b["values"])
            and all(same_bits(x, y) for x, y in zip(a["values"], b["values"])))


def close_to_eager(compiled: dict[str, Any], eager: dict[str, Any]) -> bool:
    import torch

    if len(compiled["values"]) != len(eager["values"]):
        return False
    for x, y in zip(compiled["values"], eager["values"]):
        if x is None or y is None:
            if (x is None) != (y is None):
                return False
            continue
        low = torch.bfloat16 in (x.dtype, y.dtype) or torch.float16 in (x.dtype, y.dtype)
        tol = 8e-2 if low else 2e-3
        try:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol, equal_nan=True, check_dtype=True)
        except AssertionError:
            return False
    return True


def deterministic(program: dict[str, Any]) -> bool:
    """Whether two runs of the same compiled program give the same bits: on a GPU, the
    backward of a gather accumulates with atomic adds, in no fixed order."""
    if program.get("device", "cpu") == "cpu":
        return True
    return not (program["kind"] == "training" and any(op[0] == "index" for op in program["ops"]))


def same_results(program: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Bitwise where the program is deterministic, else within tolerance."""
    if deterministic(program):
        return results_equal(a, b)
    return a["grad"] == b["grad"] and close_to_eager(a, b)


def _looked_up(stats: dict[str, Any]) -> bool:
    return bool(stats["hits"] or stats["misses"] or stats["saves"] or stats["uncacheable"])


def classify(program: dict[str, Any], cold: dict[str, Any], warm: dict[str, Any] | None) -> tuple[str, str]:
    """(outcome, detail) of one program from its phase records."""
    condition = program["condition"]
    if "crashed" in cold:
        return "crashed", f"cold: {cold['crashed']}"
    if "eager" not in cold:
        return "invalid", cold.get("eager_error", "")[:200]
    if "compiled" not in cold:
        if "fresh" not in cold:
            return "compile-fails-too", cold.get("compiled_error", "")[:200]
        return "compile-lost", cold.get("compiled_error", "")[:300]
    if warm is None:
        return "uncacheable", ",".join(sorted(cold["stats"]["uncacheable"]))
    if "crashed" in warm:
        return "crashed", f"{warm['phase']}: {warm['crashed']}"
    if not _looked_up(cold["stats"]) and not _looked_up(warm["stats"]) and "compiled" in warm:
        # Dynamo made no graph (a program that returns an input as it is): nothing was
        # looked up or stored, so nothing could be served stale.
        if not same_results(program, warm["compiled"], cold["compiled"]):
            return "warm-differs", "no graph, yet the warm output differs from cold"
        return "no-graph", ""
    if not conditions.changed(condition):
        if "compiled" not in warm:
            error = warm.get("compiled_error", "")
            return ("warm-missed" if "tripwire" in error else "warm-error"), error[:300]
        # A hit count below the cold saves is no miss: on a GPU a cold process saves an
        # entry again after its kernels' first-run tuning (one key, two saves); a graph the
        # warm process compiled shows as a miss or trips the tripwire.
        if warm["stats"]["saves"] or warm["stats"]["misses"] or not warm["stats"]["hits"]:
            return "warm-missed", json.dumps(warm["stats"])
        if not same_results(program, warm["compiled"], cold["compiled"]):
            return "warm-differs", "warm output not equal to cold (bitwise where deterministic)"
        return "hit", ""
    affects = conditions.affects(condition, program.get("device", "cpu"), program["kind"])
    if (cold["stats"]["uncacheable"] and "compiled" not in warm and "tripwire" in warm.get("compiled_error", "")
            and not (warm["stats"]["hits"] and affects)):
        # Graphs artcache declined in the cold process compile again here, and the
        # tripwire catches that compile: an uncacheable program, not a failure.
        return "uncacheable", ",".join(sorted(cold["stats"]["uncacheable"]))
    if warm["stats"]["hits"]:
        if affects:
            return "stale-hit", f"{condition['name']} {condition['cold']} -> {condition['warm']}: {json.dumps(warm['stats'])}"
        if "compiled" not in warm:
            return "warm-error", warm.get("compiled_error", "")[:300]
        fresh = warm.get("fresh") or {}
        if "eager" not in fresh:
            return "invalid", "under the warm condition: " + fresh.get("eager_error", "")[:200]
        if "compiled" not in fresh or not same_results(program, warm["compiled"], fresh["compiled"]):
            return "warm-differs", "hit not equal to a fresh compile under the warm condition (bitwise where deterministic)"
        return "hit-unaffected", ""
    if warm["stats"]["misses"] or warm["stats"]["saves"]:
        return "miss-changed", ""  # the compile after the miss tripped (in a record without tripwires: ran)
    fresh = warm.get("fresh") or {}
    if "eager_error" in fresh:
        return "invalid", "under the warm condition: " + fresh["eager_error"][:200]
    return "warm-error", warm.get("compiled_error", "no lookup recorded")[:300]


def run_batch(programs: list[dict[str, Any]], work: Path, device: str, timeout: float) -> dict[int, dict[str, Any]]:
    cold = run_phase("cold", programs, work, device, timeout)
    ok = [p for p in programs if "compiled" in cold[p["seed"]] and "eager" in cold[p["seed"]]]
    same = [p for p in ok if not conditions.changed(p["condition"]) and not cold[p["seed"]]["stats"]["uncacheable"]]
    moved = [p for p in ok if conditions.changed(p["condition"])]
    warm = {**(run_phase("warm", same, work, device, timeout) if same else {}),
            **(run_phase("changed", moved, work, device, timeout) if moved else {})}
    # A hit must equal a fresh compile; a program that reached no lookup may be invalid
    # under the warm condition (eager fails too).
    recheck = [p for p in moved if "crashed" not in warm[p["seed"]]
               and (warm[p["seed"]]["stats"]["hits"] or not warm[p["seed"]]["stats"]["misses"])]
    if recheck:
        for seed, fresh in run_phase("fresh", recheck, work, device, timeout).items():
            warm[seed] = {**warm[seed], "fresh": fresh}
    out = {}
    for p in programs:
        c, w = cold[p["seed"]], warm.get(p["seed"])
        outcome, detail = classify(p, c, w)
        eager_ok = close_to_eager(c["compiled"], c["eager"]) if "compiled" in c and "eager" in c else None
        fresh = (w or {}).get("fresh") or {}
        warm_eager_ok = close_to_eager(w["compiled"], fresh["eager"]) if w and "compiled" in w and "eager" in fresh else None
        out[p["seed"]] = {"outcome": outcome, "detail": detail, "kind": p["kind"], "condition": p["condition"],
                          "dynamic": p["dynamic"], "cold_close_to_eager": eager_ok, "warm_close_to_eager": warm_eager_ok,
                          "uncacheable": sorted(c.get("stats", {}).get("uncacheable", {})),
                          "cold_seconds": c.get("seconds"), "program": p, "batch": programs[0]["seed"]}
    return out


def write_reproducers(records: dict[int, dict[str, Any]], directory: Path, device: str) -> list[str]:
    written = []
    for seed, r in sorted(records.items()):
        if r["outcome"] in FAILURES:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{device}-{seed}.json"
            # The programs that shared its processes: a failure may depend on what ran before.
            batch = [b["program"] for b in records.values() if b.get("batch") == r.get("batch")]
            path.write_text(json.dumps({"seed": seed, "device": device, "outcome": r["outcome"], "detail": r["detail"],
                                        "condition": r["condition"], "program": r["program"], "batch": batch},
                                       indent=1) + "\n")
            written.append(str(path))
    return written


def summarize(records: dict[int, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    outcomes = collections.Counter(r["outcome"] for r in records.values())
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_condition: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in records.values():
        by_kind[r["kind"]][r["outcome"]] += 1
        key = f"{r['condition']['name']} {'changed' if conditions.changed(r['condition']) else 'kept'}"
        by_condition[key][r["outcome"]] += 1
    return {
        **meta,
        "programs": len(records),
        "counts": dict(sorted(outcomes.items())),
        "failures": sorted(s for s, r in records.items() if r["outcome"] in FAILURES),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "by_condition": {k: dict(v) for k, v in sorted(by_condition.items())},
        "uncacheable_reasons": dict(collections.Counter(x for r in records.values() for x in r["uncacheable"])),
        "cold_not_close_to_eager": sorted(s for s, r in records.items() if r["cold_close_to_eager"] is False),
        "warm_not_close_to_eager": sorted(s for s, r in records.items() if r.get("warm_close_to_eager") is False),
        "records": {str(s): {k: v for k, v in r.items() if k != "program"} for s, r in sorted(records.items())},
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| outcome | programs |", "|---|---:|"]
    lines += [f"| {k}{' (failure)' if k in FAILURES else ''} | {n} |" for k, n in summary["counts"].items()]
    lines += ["", "| kind | " + " | ".join(sorted(summary["counts"])) + " |", "|---|" + "---:|" * len(summary["counts"])]
    for kind, counts in summary["by_kind"].items():
        lines.append(f"| {kind} | " + " | ".join(str(counts.get(k, 0)) for k in sorted(summary["counts"])) + " |")
    lines += ["", "| condition | " + " | ".join(sorted(summary["counts"])) + " |", "|---|" + "---:|" * len(summary["counts"])]
    for name, counts in summary["by_condition"].items():
        lines.append(f"| {name} | " + " | ".join(str(counts.get(k, 0)) for k in sorted(summary["counts"])) + " |")
    return "\n".join(lines) + "\n"


def merge(paths: list[Path]) -> dict[str, Any]:
    records: dict[Any, dict[str, Any]] = {}
    metas = []
    for path in paths:
        data = json.loads(path.read_text())
        # A merged summary brings the runs it was made from.
        metas.extend(data.get("merged_from", []))
        if meta := {k: data[k] for k in ("device", "torch", "machine", "seeds_run", "date", "hours", "jobs") if k in data}:
            metas.append(meta)
        for seed, r in data["records"].items():
            # A run's records are keyed by seed, a merged summary's by device:seed already.
            key = seed if ":" in seed else f"{data.get('device', 'cpu')}:{int(seed):06d}"
            records[key] = {**r, "program": {}}
    return summarize(records, {"merged_from": metas})


def _ranges(seeds: list[int]) -> list[list[int]]:
    """Sorted seeds as [start, stop) ranges."""
    out: list[list[int]] = []
    for seed in seeds:
        if out and out[-1][1] == seed:
            out[-1][1] = seed + 1
        else:
            out.append([seed, seed + 1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", help="START:STOP, or a comma-separated list of seeds and ranges")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=10, help="programs per process")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reproducers", type=Path, default=REPO / "tests" / "fuzz" / "reproducers")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--merge", type=Path, nargs="+")
    parser.add_argument("--deadline", type=float, default=0,
                        help="seconds: start no batch after this; the summary covers the batches done")
    args = parser.parse_args(argv)
    if args.merge:
        summary = merge(args.merge)
    else:
        if not args.seeds:
            parser.error("--seeds START:STOP (or --merge)")
        work = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz-campaign-"))
        programs = [generate(seed, device=args.device) for seed in parse_seeds(args.seeds)]
        batches = [programs[i: i + args.batch] for i in range(0, len(programs), args.batch)]
        records: dict[int, dict[str, Any]] = {}
        began = time.perf_counter()

        def batch(programs_: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
            if args.deadline and time.perf_counter() - began > args.deadline:
                return {}  # past the deadline: not started
            return run_batch(programs_, work / f"batch-{programs_[0]['seed']}", args.device, args.timeout)

        def summary_so_far() -> dict[str, Any]:
            import torch

            return summarize(dict(records), {
                "device": args.device, "seeds": args.seeds, "seeds_run": _ranges(sorted(records)),
                "torch": torch.__version__,
                "machine": f"{os.cpu_count()} CPUs {platform.machine()}, Python {platform.python_version()}",
                "date": str(datetime.date.today()), "hours": round((time.perf_counter() - began) / 3600, 2),
                "jobs": args.jobs,
            })

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for done in concurrent.futures.as_completed([pool.submit(batch, b) for b in batches]):
                batch_records = done.result()
                records.update(batch_records)
                write_reproducers(batch_records, args.reproducers, args.device)
                counts = collections.Counter(r["outcome"] for r in records.values())
                print(f"{len(records)}/{len(programs)} programs: {dict(counts)}", flush=True)
                # Written after every batch: a run stopped from outside keeps what it did.
                args.out.write_text(json.dumps(summary_so_far(), indent=1, sort_keys=True) + "\n")
        summary = summary_so_far()
    args.out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(summary))
    print(json.dumps({k: summary[k] for k in ("programs", "counts", "failures")}, indent=1))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
