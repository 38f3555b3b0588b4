"""torch's OpInfo database as a warm-start corpus: every op compiled cold with artcache,
then served warm in a fresh process with the compile tripwires on.

    python benchmarks/opinfo_corpus.py [--device cpu|cuda] [--jobs N] [--batch 40]
        [--ops NAME,...] [--limit N] [--workdir DIR] [--json FILE] [--out FILE]

For each op in ``torch.testing._internal.common_methods_invocations.op_db`` that supports
float32 on the device: the first sample input of ``op.sample_inputs(device, float32)``
(made after ``torch.manual_seed(0)``), its tensors passed as the compiled function's
arguments and everything else closed over.

Skip rule (decided in the cold process, from the op's eager run on that sample):

* **random**: the eager run dispatches an aten op tagged ``nondeterministic_seeded``
  (``bernoulli``, ``normal``, ``uniform_``, dropout, ``rand*``, ...): two runs differ by design;
* **uninitialized memory**: the OpInfo says ``has_nondeterministic_output`` (``empty*``,
  ``new_empty*``: their values are whatever memory held);
* no float32 sample on the device, or the eager run itself raises.

Phases, each a fresh process over a batch of ops (``torch._dynamo.reset()`` between ops),
each with its own empty ``TORCHINDUCTOR_CACHE_DIR`` so torch's own caches cannot help:

1. **cold**: ``backend=artcache`` into a store; per op, the graphs compiled, artcache's
   uncacheable reasons (``Cache.stats().uncacheable``), the eager and compiled outputs;
2. **warm**: the same ops on the same store with ``tests/_tripwire.py`` installed (any
   compile, C++ build or subprocess raises); per op, hits and outputs, compared with the
   cold outputs bitwise;
3. **fresh** (only for ops whose warm output differs): two more fresh processes, each a
   plain ``backend="inductor"`` compile with torch's caches off, compared with each other
   bitwise: if they differ too, the op's compiled code is nondeterministic by itself.

A process that dies (a crash inside an op) is restarted on the rest of its batch; the op
it died on is reported as crashed in that phase.  ``--jobs`` runs that many batches at a
time.  The JSON (``--json``) holds one record per op; the Markdown (``--out``) the counts,
the uncacheable reasons with their detail, and the op lists.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()


# -- the op side (runs in the worker processes) ------------------------------------------
def _ops(device: str) -> list[Any]:
    import importlib.util
    import types
    import unittest

    import torch

    if importlib.util.find_spec("expecttest") is None:
        # torch's test utilities import expecttest only for its TestCase base class and
        # an ACCEPT flag, neither used by op_db; a machine without network (the GPU one)
        # gets this stand-in instead of a failed import.
        stand_in = types.ModuleType("expecttest")
        stand_in.TestCase = unittest.TestCase  # type: ignore[attr-defined]
        stand_in.ACCEPT = False  # type: ignore[attr-defined]
        sys.modules["expecttest"] = stand_in
    from torch.testing._internal.common_methods_invocations import op_db

    return [op for op in op_db if torch.float32 in op.supported_dtypes(device)]


def op_id(op: Any) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def _first_sample(op: Any, device: str) -> Any:
    import torch

    torch.manual_seed(0)
    return next(iter(op.sample_inputs(device, torch.float32, requires_grad=False)), None)


def _as_function(op: Any, sample: Any) -> tuple[Any, list[Any]]:
    """``fn(*tensors)`` calling the op on the sample, and the sample's tensors."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    call = op.op

    def fn(*tensors: Any) -> Any:
        values = list(leaves)
        for position, tensor in zip(positions, tensors):
            values[position] = tensor
        inp, args, kwargs = pytree.tree_unflatten(values, spec)
        return call(inp, *args, **kwargs)

    return fn, [leaves[i] for i in positions]


def _outputs(value: Any) -> list[Any]:
    """The leaves of an op's result, as data a result file can hold."""
    import torch
    from torch.utils import _pytree as pytree

    out: list[Any] = []
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            out.append(leaf.detach().to("cpu", copy=True))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            out.append(leaf)
        else:
            out.append(repr(leaf))
    return out


def _classify(op: Any, fn: Any, tensors: list[Any]) -> tuple[str | None, Any]:
    """(skip reason or None, eager result)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    if getattr(op, "has_nondeterministic_output", False):  # an attribute torch 2.11 lacks
        return "uninitialized-memory", None
    seeded: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):
                seeded.append(str(func))
            return func(*args, **(kwargs or {}))

    with Watch():
        result = fn(*[t.clone() for t in tensors])
    if seeded:
        return "random", None
    return None, result


def _stats_delta(before: Any, after: Any) -> dict[str, Any]:
    return {
        "hits": after.hits - before.hits,
        "saves": after.saves - before.saves,
        "misses": {k: v - before.misses.get(k, 0) for k, v in after.misses.items() if v != before.misses.get(k, 0)},
        "uncacheable": {k: v - before.uncacheable.get(k, 0) for k, v in after.uncacheable.items()
                        if v != before.uncacheable.get(k, 0)},
    }


def _capture_details() -> Any:
    """A log handler collecting artcache's "compiling without the cache (reason: detail)"
    and "graph not cached" lines, so the report can name the exact type or callable."""
    import logging

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "not cached" in message or "without the cache" in message:
                self.lines.append(message)

    handler = Keep()
    logger = logging.getLogger("artcache")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def _run_one(op: Any, phase: str, device: str, backend: Any, cache: Any) -> dict[str, Any]:
    import torch

    record: dict[str, Any] = {"op": op_id(op)}
    sample = _first_sample(op, device)
    if sample is None:
        return {**record, "status": "skipped", "skip": "no-sample"}
    fn, tensors = _as_function(op, sample)
    if phase == "cold":
        try:
            skip, eager = _classify(op, fn, tensors)
        except Exception as exc:  # noqa: BLE001 - the op's own eager failure is a skip, reported
            return {**record, "status": "skipped", "skip": "eager-error", "error": f"{type(exc).__name__}: {exc}"[:300]}
        if skip:
            return {**record, "status": "skipped", "skip": skip}
        record["eager"] = _outputs(eager)
    graphs = [0]

    def counting(gm: Any, example_inputs: Any) -> Any:
        graphs[0] += 1
        return backend(gm, example_inputs)

    torch._dynamo.reset()
    before = cache.stats() if cache is not None else None
    started = time.perf_counter()
    try:
        compiled = torch.compile(fn, backend=counting, fullgraph=False)
        result = compiled(*[t.clone() for t in tensors])
        record["status"] = "ok"
        record["outputs"] = _outputs(result)
    except Exception as exc:  # noqa: BLE001 - a compile failure of one op is recorded, the batch goes on
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        record["error_tail"] = traceback.format_exc()[-1500:]
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["graphs"] = graphs[0]
    if cache is not None:
        record["stats"] = _stats_delta(before, cache.stats())
    return record


def worker(args: argparse.Namespace) -> int:
    """One fresh process over a batch of ops, one result file per op in ``--results``."""
    import torch

    results = Path(args.results)
    wanted = args.ops.split(",")
    # Loading op_db runs ``platform.platform()`` (a subprocess): before the tripwires.
    by_id = {op_id(op): op for op in _ops(args.device)}
    if args.phase == "warm":
        sys.path.insert(0, str(REPO))
        from tests import _tripwire

        _tripwire.install()
    cache = backend = None
    handler = None
    if args.phase in ("cold", "warm"):
        import artcache

        cache = artcache.Cache(strict=False)
        backend = cache.backend()
        handler = _capture_details()
    else:
        from torch._inductor.compile_fx import compile_fx

        backend = compile_fx  # a plain Inductor compile (the counting wrapper calls it)
    for name in wanted:
        out = results / f"{name}.pt"
        if out.exists():
            continue
        (results / "current").write_text(name)
        if handler is not None:
            handler.lines.clear()
        record = _run_one(by_id[name], args.phase, args.device, backend, cache)
        if handler is not None and handler.lines:
            record["log"] = handler.lines[:6]
        torch.save(record, out)
    (results / "current").unlink(missing_ok=True)
    return 0


# -- the orchestrator ---------------------------------------------------------------------
def _environment(cache_dir: Path, store: Path | None, fresh: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "TORCHINDUCTOR_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    env["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # --jobs is the parallelism; not a key input
    if store is not None:
        env["ARTCACHE_STORE"] = f"file://{store}"
    if fresh:
        env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
        env["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
    return env


def run_phase(phase: str, ops: list[str], work: Path, store: Path | None, device: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Run ``phase`` over ``ops`` in fresh processes until every op has a record."""
    import torch

    results = work / phase
    results.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        left = [name for name in ops if not (results / f"{name}.pt").exists()]
        if not left:
            break
        attempt += 1
        env = _environment(work / f"inductor-{phase}-{attempt}", store, fresh=phase.startswith("fresh"))
        command = [sys.executable, str(THIS), "--worker", phase.removesuffix("-a").removesuffix("-b"),
                   "--device", device, "--results", str(results), "--ops", ",".join(left)]
        log = (work / f"{phase}-{attempt}.log").open("w")
        try:
            proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:
            log.close()
        current = results / "current"
        if code != 0 or current.exists():
            died_on = current.read_text() if current.exists() else left[0]
            tail = (work / f"{phase}-{attempt}.log").read_text(errors="replace")[-800:]
            torch.save({"op": died_on, "status": "crashed", "error": f"process exit {code}", "error_tail": tail},
                       results / f"{died_on}.pt")
            current.unlink(missing_ok=True)
    return {name: torch.load(results / f"{name}.pt", weights_only=True) for name in ops}  # our own result files


def same_bits(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        return False
    if not isinstance(a, torch.Tensor):
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != b.layout:
        return False
    if a.layout != torch.strided or a.is_quantized:
        return bool(torch.equal(a, b))
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def outputs_equal(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))


def close_to_eager(outputs: list[Any], eager: list[Any]) -> bool:
    import torch

    if len(outputs) != len(eager):
        return False
    for x, y in zip(outputs, eager):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            try:
                torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3, equal_nan=True, check_stride=False)
            except (AssertionError, RuntimeError, TypeError, ValueError):
                return False
        elif x != y and not (isinstance(x, float) and x != x):
            return False
    return True


def run_batch(ops: list[str], work: Path, device: str, timeout: float) -> dict[str, dict[str, Any]]:
    store = work / "store"
    cold = run_phase("cold", ops, work, store, device, timeout)
    compiled = [name for name, r in cold.items() if r["status"] == "ok" and r.get("graphs", 0) > 0]
    warm = run_phase("warm", compiled, work, store, device, timeout) if compiled else {}
    out = _combine(cold, warm)
    differing = [name for name, r in out.items() if r.get("warm_bitwise") is False]
    if differing:
        fresh = (run_phase("fresh-a", differing, work, None, device, timeout),
                 run_phase("fresh-b", differing, work, None, device, timeout))
        _add_fresh(out, differing, *fresh)
    return out


def _combine(cold: dict[str, dict[str, Any]], warm: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, c in cold.items():
        record: dict[str, Any] = {k: v for k, v in c.items() if k not in ("outputs", "eager", "error_tail")}
        if c["status"] == "ok" and "eager" in c:
            record["cold_matches_eager"] = close_to_eager(c["outputs"], c["eager"])
        w = warm.get(name)
        if w is not None:
            record["warm"] = {k: v for k, v in w.items() if k not in ("outputs", "op", "error_tail")}
            if w["status"] == "ok":
                record["warm_bitwise"] = outputs_equal(c["outputs"], w["outputs"])
        out[name] = record
    return out


def _add_fresh(out: dict[str, dict[str, Any]], names: list[str], a: dict[str, Any], b: dict[str, Any]) -> None:
    for name in names:
        if name in a and name in b:
            both_ok = a[name]["status"] == "ok" and b[name]["status"] == "ok"
            out[name]["fresh_compiles_differ"] = (not outputs_equal(a[name]["outputs"], b[name]["outputs"])) if both_ok else None


def collect(work: Path) -> dict[str, dict[str, Any]]:
    """The records of a (possibly unfinished) run from its workdir: every op whose phases
    are complete; an op still waiting for its warm phase is left out."""
    import torch

    def load(directory: Path) -> dict[str, dict[str, Any]]:
        return {f.stem: torch.load(f, weights_only=True) for f in sorted(directory.glob("*.pt"))} if directory.is_dir() else {}

    out: dict[str, dict[str, Any]] = {}
    for batch in sorted(work.glob("batch*")):
        cold, warm = load(batch / "cold"), load(batch / "warm")
        cold = {n: r for n, r in cold.items() if n in warm or r["status"] != "ok" or r.get("graphs", 0) == 0}
        records = _combine(cold, warm)
        differing = [name for name, r in records.items() if r.get("warm_bitwise") is False]
        _add_fresh(records, differing, load(batch / "fresh-a"), load(batch / "fresh-b"))
        out.update(records)
    return out


def classify(record: dict[str, Any]) -> str:
    """One outcome per op, for the counts."""
    if record["status"] == "skipped":
        return f"skipped: {record['skip']}"
    if record["status"] != "ok":
        return "cold compile failed" if record["status"] == "error" else "cold crashed"
    if record.get("graphs", 0) == 0:
        return "no graph (Dynamo compiled nothing)"
    stats = record.get("stats", {})
    if stats.get("uncacheable"):
        return "uncacheable"
    warm = record.get("warm", {})
    if warm.get("status") != "ok":
        return "warm failed"
    if warm.get("stats", {}).get("hits", 0) < record["graphs"]:
        return "warm missed"
    if not record.get("warm_bitwise"):
        return "differs (fresh compiles differ too)" if record.get("fresh_compiles_differ") else "differs"
    return "served warm, bitwise"


def render(records: dict[str, dict[str, Any]], args: argparse.Namespace, elapsed: float) -> str:
    import torch

    outcomes = collections.Counter(classify(r) for r in records.values())
    compiled = sum(n for k, n in outcomes.items() if not k.startswith(("skipped", "cold")) and not k.startswith("no graph"))
    served = outcomes["served warm, bitwise"]
    reasons: collections.Counter[str] = collections.Counter()
    details: dict[str, list[str]] = collections.defaultdict(list)
    for name, r in sorted(records.items()):
        if classify(r) == "uncacheable":
            for reason in r["stats"]["uncacheable"]:
                reasons[reason] += 1
                details[reason].append(f"`{name}`: " + "; ".join(r.get("log", [])[:2]).replace("|", "\\|"))
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    lines = [
        "# OpInfo corpus: cold with artcache, warm in a fresh process with tripwires",
        "",
        f"- generated: {datetime.date.today()} by `benchmarks/opinfo_corpus.py` ({elapsed / 60:.0f} min, --jobs {args.jobs})",
        f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, device {args.device}",
        f"- artcache commit: {commit}",
        f"- ops in op_db with float32 on {args.device}: {len(records)}",
        "",
        "| outcome | ops |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {n} |" for k, n in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += [
        "",
        f"**Compiled cold: {compiled}; served warm bitwise: {served} ({100 * served / max(compiled, 1):.1f}%).**",
        "",
        "## Uncacheable, by artcache's reason",
        "",
        "| reason | ops |",
        "|---|---:|",
    ]
    lines += [f"| `{k}` | {n} |" for k, n in reasons.most_common()]
    for reason, entries in sorted(details.items()):
        lines += ["", f"### `{reason}`", ""] + [f"- {e}" for e in entries]
    for outcome in sorted(outcomes):
        if outcome in ("served warm, bitwise", "uncacheable") or outcome.startswith("skipped"):
            continue
        names = sorted(n for n, r in records.items() if classify(r) == outcome)
        lines += ["", f"## {outcome}", ""]
        for name in names:
            r = records[name]
            why = r.get("error") or r.get("warm", {}).get("error") or ""
            lines.append(f"- `{name}`" + (f": {why[:200]}".replace("\n", " ") if why else ""))
    skipped = sorted((r["skip"], n) for n, r in records.items() if r["status"] == "skipped")
    lines += ["", "## Skipped", ""]
    for reason in sorted({s for s, _ in skipped}):
        lines.append(f"- {reason}: " + ", ".join(f"`{n}`" for s, n in skipped if s == reason))
    errors = collections.Counter(r["error"].split("\n")[0][:160] for r in records.values() if r.get("skip") == "eager-error")
    if errors:
        lines += ["", "Most common eager errors:", ""]
        lines += [f"- {n} x `{message}`" for message, n in errors.most_common(5)]
    mismatch = sorted(n for n, r in records.items() if r.get("cold_matches_eager") is False)
    lines += ["", f"## Cold compile vs eager beyond rtol=atol=1e-3 (Inductor's numerics, not the cache): {len(mismatch)}", "",
              ", ".join(f"`{n}`" for n in mismatch) or "none"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=40, help="ops per process")
    parser.add_argument("--ops", default="", help="comma-separated op ids (default: all)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N ops")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps stores and per-op results (resumable)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true", help="render what --workdir holds, run nothing")
    parser.add_argument("--also", type=Path, nargs="*", default=[],
                        help="with --report-only: more workdirs, whose records replace --workdir's for the same ops")
    parser.add_argument("--worker", choices=("cold", "warm", "fresh"), help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.phase = args.worker
        return worker(args)

    import torch  # noqa: F401 - fail here, not in every worker, if torch is missing

    if args.report_only:
        if args.workdir is None:
            parser.error("--report-only needs --workdir")
        records = collect(args.workdir)
        for later in args.also:
            records.update(collect(later))
        report = render(records, args, 0.0)
        if args.out:
            args.out.write_text(report)
        if args.json:
            args.json.write_text(json.dumps({"device": args.device, "ops": records}, indent=1, sort_keys=True, default=str))
        print(report)
        return 0

    try:
        names = [op_id(op) for op in _ops(args.device)]
    except ModuleNotFoundError as exc:
        sys.exit(f"opinfo_corpus: torch's OpInfo database needs {exc.name} (pip install {exc.name})")
    if args.ops:
        wanted = set(args.ops.split(","))
        names = [n for n in names if n in wanted]
    if args.limit:
        names = names[: args.limit]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="opinfo-"))
    work.mkdir(parents=True, exist_ok=True)
    batches = [names[i : i + args.batch] for i in range(0, len(names), args.batch)]
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_batch, batch, work / f"batch{i:03d}", args.device, args.timeout): i
                   for i, batch in enumerate(batches)}
        for done in concurrent.futures.as_completed(futures):
            records.update(done.result())
            print(f"batch {futures[done]} done ({len(records)}/{len(names)} ops)", flush=True)
    elapsed = time.perf_counter() - started
    summary = {"device": args.device, "ops": records,
               "outcomes": dict(collections.Counter(classify(r) for r in records.values()))}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    report = render(records, args, elapsed)
    if args.out:
        args.out.write_text(report)
    print(report)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
