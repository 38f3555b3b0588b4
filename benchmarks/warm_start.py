"""Warm-start benchmark: first-call time of torch.compile with and without artcache.

    python benchmarks/warm_start.py [--models mlp,gpt2,gpt2-train,resnet50] [--device cpu|cuda]
        [--repeats 3] [--mode MODE] [--steps 50] [--remote URL] [--out FILE]

Every measurement is one fresh ``python`` process (this same file, run with ``--child``),
so nothing compiled, imported or cached in memory by one variant can help another.  Each
model runs in these variants, side by side in one run:

=================  ======================================================================
floor              ``backend="eager"``: Dynamo tracing + an eager run, no compiler; the
                   least any warm start can cost
torch-cold         ``backend="inductor"`` with empty ``TORCHINDUCTOR_CACHE_DIR`` and
                   ``TRITON_CACHE_DIR``
torch-warm         the same, reusing the directories torch-cold just filled (torch's own
                   FX-graph / AOTAutograd / kernel caches)
artcache-cold      ``backend="artcache"`` with an empty ``ARTCACHE_STORE`` and empty torch dirs
artcache-warm      the store artcache-cold filled, with *new* empty torch dirs, so torch's
                   own caches cannot help
artcache-remote    only with ``--remote URL``: artcache-cold's entries are copied to URL
                   (untimed), then ``ARTCACHE_STORE=file://<empty>,URL`` with new empty
                   torch dirs: a warm start from the shared tier alone
=================  ======================================================================

What each child measures (all in seconds, medians over ``--repeats``):

* **first call**: from just before ``torch.compile(...)`` to the first result, synchronized
  on CUDA.  Starting before ``torch.compile`` (not at the first call) keeps backend lookup
  and its imports inside the window for every backend alike: ``"artcache"`` resolves through
  an entry point at ``torch.compile`` time, Inductor imports its compiler at the first call.
  ``torch._dynamo`` itself is imported before the clock in every child (importing
  transformers or torchvision does that anyway; otherwise only the MLP would time it), and
  every child runs ``gc.collect()`` just before it, so a full collection made due by the
  imports before the window does not land in one variant's window and not another's; the
  collections inside the window are reported with each run.
* **to first result**: from the parent's spawn of the child to that same point, i.e.
  interpreter start, imports, model build, compile or load, first run: what a job waits for.
* **whole child**: spawn to exit, including the steady-state loop below and teardown.
* **steady step**: median of ``--steps`` timed calls after ``--warmup`` calls, each
  synchronized on CUDA, to check that a loaded entry runs as fast as a fresh compile.
* **pulled in** (not a time): which of Inductor's compiler-side modules
  (``tests/_tripwire.COMPILER_MODULES``) the first call had imported and how many files it added to ``$TRITON_CACHE_DIR``: a warm start that compiles
  or builds a launcher shows here.

Repeats are interleaved: within each repeat the variant groups (floor / torch / artcache)
rotate, so drift and background load spread over all of them.  The benchmark asserts
nothing about timings; it reports absolute numbers and ratios.  A model whose package
(transformers, torchvision) is missing is reported as skipped.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

sys.path.insert(0, str(THIS.parent))  # the model and report modules beside this file, however it is run
from _bytecode import compile_checkout
from warm_start_models import BUILDERS, ArtcacheProbe
from warm_start_report import (
    AC_COLD,
    AC_REMOTE,
    AC_WARM,
    FLOOR,
    TORCH_COLD,
    TORCH_WARM,
    Run,
    fmt_ms,
    render,
)

MODELS: dict[str, tuple[str, ...]] = {
    # model -> the packages it needs beyond torch
    "mlp": (),
    "gpt2": ("transformers",),
    "gpt2-train": ("transformers",),
    "resnet50": ("torchvision",),
}
ALL_VARIANTS = (FLOOR, TORCH_COLD, TORCH_WARM, AC_COLD, AC_WARM, AC_REMOTE)
BACKENDS = {FLOOR: "eager", TORCH_COLD: "inductor", TORCH_WARM: "inductor", AC_COLD: "artcache", AC_WARM: "artcache", AC_REMOTE: "artcache"}


# =========================================================================================
# Child: one fresh process, one model, one variant
# =========================================================================================


def artcache_entry_point_installed() -> bool:
    """Whether ``backend="artcache"`` resolves through the installed entry point (the normal
    way).  Asked by the parent: a scan in the child would warm importlib.metadata's caches
    before the timed window and hide part of torch's own backend lookup."""
    from importlib import metadata

    return any(ep.name == "artcache" for ep in metadata.entry_points(group="torch_dynamo_backends"))


def _register_artcache_backend() -> None:
    """On a machine where artcache is carried but not installed: register the function the
    entry point names under the same name."""
    from torch._dynamo.backends.registry import register_backend

    from artcache.backend import artcache_backend

    register_backend(name="artcache")(artcache_backend)


class _FirstCallProfile:
    """``--profile FILE`` (used by ``profile_first_call.py``): cProfile over the first-call
    window, written as text; a line on stderr marks the window for ``-X importtime``."""

    def __init__(self, path: str) -> None:
        import cProfile

        # benchmarks/ is sys.path[0] when this file runs as a script
        from _first_call_spy import Spy

        self.path = path
        self.spy = Spy()
        self.spy.install()
        self.profile = cProfile.Profile()
        print("artcache-bench: first call starts", file=sys.stderr, flush=True)
        self.profile.enable()

    def finish(self) -> None:
        import io
        import pstats

        self.profile.disable()
        print("artcache-bench: first call ends", file=sys.stderr, flush=True)
        self.spy.write(self.path + ".spy.json")
        text = io.StringIO()
        stats = pstats.Stats(self.profile, stream=text)
        for order, count in (("cumulative", 70), ("tottime", 40)):
            stats.sort_stats(order).print_stats(count)
        Path(self.path).write_text(text.getvalue())


def _triton_cache_files() -> int:
    triton_dir = os.environ.get("TRITON_CACHE_DIR")
    return sum(len(names) for _, _, names in os.walk(triton_dir)) if triton_dir else 0


def _pulled_in(files_before: int) -> dict[str, Any]:
    """What the first call brought in that a warm start should not need: which of the
    compiler-side modules are imported, and how many files it added to ``$TRITON_CACHE_DIR``
    (kernels or launchers that Triton compiled, or that torch emitted, in this process)."""
    # The modules the tests assert a warm start never imports (artcache/_lean_load.py): one
    # list for both, so the benchmark reports exactly what the tests check.
    from tests._tripwire import compiler_modules_imported

    return {"compiler_modules": compiler_modules_imported(),
            "triton_cache_files": _triton_cache_files() - files_before}


class _GcWatch:
    """The garbage collections inside the first-call window: how many full ones, and the
    seconds all of them took."""

    def __init__(self) -> None:
        self.full = 0
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._start
        self.full += info["generation"] == 2

    def stop(self) -> dict[str, Any]:
        gc.callbacks.remove(self._callback)
        return {"full": self.full, "s": round(self.seconds, 4)}


def child_main(args: argparse.Namespace) -> None:
    """Run one variant of one model and write its measurements as JSON to ``args.result``."""
    t_import = time.perf_counter()
    import torch

    import_s = time.perf_counter() - t_import
    # Dynamo itself is imported before the clock, in every child: importing transformers or
    # torchvision does it anyway, so without this the MLP alone would time it (seconds).
    t_dynamo = time.perf_counter()
    import torch._dynamo

    import_dynamo_s = time.perf_counter() - t_dynamo
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    backend = BACKENDS[args.variant]
    result: dict[str, Any] = {"variant": args.variant, "model": args.model, "backend": backend, "import_torch_s": import_s,
                              "import_dynamo_s": import_dynamo_s}
    if backend == "artcache":
        result["artcache_backend_via"] = "registered" if args.register_backend else "entry-point"

    t_build = time.perf_counter()
    torch.manual_seed(0)
    workload = BUILDERS[args.model](device)
    sync()
    result["build_s"] = time.perf_counter() - t_build

    # mode= goes to compiling backends only: backend="eager" takes no mode.
    compile_kwargs: dict[str, Any] = {"backend": backend}
    if args.mode and backend != "eager":
        compile_kwargs["mode"] = args.mode
    torch.manual_seed(0)  # same RNG state for every variant's first step (dropout)
    sync()
    # A full collection now, in every variant: the imports and the model build above leave
    # the collector close to a full (generation 2) collection, 0.3 s and more here, and
    # whether it lands inside the window below depended on a few thousand allocations, not
    # on the work timed (measured: the MLP floor crossed it with 2,000 extra objects).
    # The window's own collections are recorded (``gc_in_window``).
    triton_files = _triton_cache_files()
    gc.collect()
    gc_watch = _GcWatch()
    t_first = time.perf_counter()
    # The probe imports artcache and the fallback registration its backend: imports that
    # the backend lookup would do in this window anyway, so they are timed here too.
    probe = ArtcacheProbe() if backend == "artcache" else None
    if backend == "artcache" and args.register_backend:
        _register_artcache_backend()
    profiler = _FirstCallProfile(args.profile) if args.profile else None
    compiled = torch.compile(workload.model, **compile_kwargs)
    # torch.compile() itself imports Dynamo and resolves the backend (seconds on a small
    # CPU); recorded apart so it can be compared with measurements that start after it.
    result["compile_call_s"] = time.perf_counter() - t_first
    out = workload.step(compiled)
    sync()
    result["first_call_s"] = time.perf_counter() - t_first
    result["gc_in_window"] = gc_watch.stop()
    result["first_call_pulled_in"] = _pulled_in(triton_files)
    if profiler is not None:
        profiler.finish()
    result["first_result_epoch"] = time.time()  # against the parent's spawn time
    first = out.detach().float().cpu()
    if probe is not None:
        # Snapshot now: the steady-state loop must not be able to hide a first-call miss.
        result["artcache_first_call"] = probe.summary()

    t_warmup = time.perf_counter()
    for _ in range(args.warmup):
        workload.step(compiled)
    sync()
    # Seconds, not a per-call median: a recompile after the first call shows up here.
    result["warmup_s"] = time.perf_counter() - t_warmup
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        workload.step(compiled)
        sync()
        times.append(time.perf_counter() - start)
    result["steady_step_s"] = statistics.median(times) if times else None
    result["steady_step_min_s"] = min(times) if times else None

    if workload.compare_to_eager:
        result["max_abs_err_vs_eager"] = float((first - workload.step(workload.model).detach().float().cpu()).abs().max())
    else:
        result["first_output"] = float(first.flatten()[0])  # the first step's loss
    if probe is not None:
        result["artcache"] = probe.summary()
    result["end_epoch"] = time.time()  # the parent's exit time minus this: teardown
    Path(args.result).write_text(json.dumps(result))


def info_main(args: argparse.Namespace) -> None:
    """Machine and versions, from a child (so the parent never initializes CUDA).  Also
    the first process to import torch, which warms the page cache for all later ones."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    for name in ("triton", "pytorch-triton", "transformers", "torchvision", "artcache"):
        version = _dist_version(name)
        if version:
            info[name] = version
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch.cuda.is_available() is False")
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["gpu_capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
    Path(args.result).write_text(json.dumps(info))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# =========================================================================================
# Parent: plan, spawn, collect, report
# =========================================================================================


@dataclass(frozen=True)
class Dirs:
    """The caches one child sees."""

    inductor: Path
    triton: Path
    store_url: str


def _fresh_torch_dirs(root: Path) -> tuple[Path, Path]:
    inductor, triton = root / "inductor", root / "triton"
    inductor.mkdir(parents=True)
    triton.mkdir(parents=True)
    return inductor, triton


def _child_env(dirs: Dirs) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    env.update(
        TORCHINDUCTOR_CACHE_DIR=str(dirs.inductor),
        TRITON_CACHE_DIR=str(dirs.triton),
        # Set for every variant, so no child ever reads or fills the user's default store.
        ARTCACHE_STORE=dirs.store_url,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    if "ARTCACHE_STRICT" in os.environ:  # the one artcache setting passed through: raise, don't degrade
        env["ARTCACHE_STRICT"] = os.environ["ARTCACHE_STRICT"]
    return env


def spawn(args: argparse.Namespace, repeat: int, model: str, variant: str, dirs: Dirs, scratch: Path) -> Run:
    result_file = scratch / f"result-{repeat}-{model}-{variant}.json"
    command = [sys.executable, str(THIS), "--child", "--model", model, "--variant", variant, "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--result", str(result_file)]
    if args.mode:
        command += ["--mode", args.mode]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.register_backend:
        command.append("--register-backend")
    spawn_epoch = time.time()
    start = time.perf_counter()
    proc = subprocess.run(command, env=_child_env(dirs), cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    exit_epoch = time.time()
    if proc.returncode != 0 or not result_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        print(f"  {model} {variant}: FAILED (exit {proc.returncode})\n    " + "\n    ".join(tail), flush=True)
        return Run(repeat, model, variant, ok=False, wall_s=wall, error="\n".join(tail))
    data = json.loads(result_file.read_text())
    data["teardown_s"] = exit_epoch - data["end_epoch"]
    run = Run(repeat, model, variant, ok=True, wall_s=wall, to_first_result_s=data["first_result_epoch"] - spawn_epoch, data=data)
    print(f"  {model:10s} {variant:16s} first call {data['first_call_s']:7.2f} s   to first result "
          f"{run.to_first_result_s:7.2f} s   child {wall:7.2f} s   steady {fmt_ms(data.get('steady_step_s'))} ms"
          f"{_artcache_note(data)}", flush=True)
    return run


def _artcache_note(data: dict[str, Any]) -> str:
    stats = data.get("artcache_first_call")
    if not stats:
        return ""
    misses = sum(stats["misses"].values())
    errors = sum(stats["errors"].values())
    note = f"   artcache: {stats['hits']} hit, {misses} miss, {stats['saves']} saved"
    if errors or stats["uncacheable"]:
        note += f", errors {stats['errors']}, uncacheable {stats['uncacheable']}"
    return note


def copy_to_remote(local_url: str, remote_url: str) -> list[str]:
    """Copy every key of the local store to the remote one, blobs before manifests (the
    store's commit order).  Returns the keys the remote did not have, to remove later."""
    from artcache.store import open_store

    local, remote = open_store(local_url), open_store(remote_url)
    added: list[str] = []
    try:
        for prefix in ("cas/", "ac/"):
            for info in list(local.iterate(prefix)):
                if remote.has(info.key):
                    continue
                data = local.get(info.key)
                if data is not None:
                    remote.put(info.key, data)
                    added.append(info.key)
    finally:
        local.close()
        remote.close()
    return added


def remove_from_remote(remote_url: str, keys: Iterable[str]) -> None:
    from artcache.store import open_store

    remote = open_store(remote_url)
    try:
        for key in sorted(keys, key=lambda k: not k.startswith("ac/")):  # manifests first
            remote.delete(key)
    finally:
        remote.close()


def run_model(args: argparse.Namespace, repeat: int, model: str, order: int, root: Path) -> list[Run]:
    """All variants of one model for one repeat, in fresh directories under ``root``."""
    scratch = root / f"r{repeat}-{model}"
    scratch.mkdir(parents=True)

    def dirs(name: str, store_url: str | None = None) -> Dirs:
        inductor, triton = _fresh_torch_dirs(scratch / name)
        # A store nobody fills, for variants that must not see one.
        return Dirs(inductor, triton, store_url or "file://" + str(scratch / name / "unused-store"))

    ac_store = "file://" + str(scratch / "artcache-store")
    runs: list[Run] = []

    def floor_group() -> None:
        runs.append(spawn(args, repeat, model, FLOOR, dirs(FLOOR), scratch))

    def torch_group() -> None:
        cold = dirs(TORCH_COLD)
        runs.append(spawn(args, repeat, model, TORCH_COLD, cold, scratch))
        runs.append(spawn(args, repeat, model, TORCH_WARM, cold, scratch))  # the dirs cold filled

    def artcache_group() -> None:
        runs.append(spawn(args, repeat, model, AC_COLD, dirs(AC_COLD, ac_store), scratch))
        runs.append(spawn(args, repeat, model, AC_WARM, dirs(AC_WARM, ac_store), scratch))
        if args.remote:
            added = copy_to_remote(ac_store, args.remote)  # untimed: stands in for a CI upload
            try:
                local = "file://" + str(scratch / "remote-local-tier")
                runs.append(spawn(args, repeat, model, AC_REMOTE, dirs(AC_REMOTE, f"{local},{args.remote}"), scratch))
            finally:
                remove_from_remote(args.remote, added)

    groups = [floor_group, torch_group, artcache_group]
    shift = order % len(groups)  # rotate which group goes first, repeat by repeat
    for group in groups[shift:] + groups[:shift]:
        group()
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return runs


# -- report -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ",".join(MODELS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs of every variant (median reported)")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune (default: none)")
    parser.add_argument("--steps", type=int, default=50, help="timed steady-state calls per child")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before the steady-state ones")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every child (default: torch's)")
    parser.add_argument("--remote", default=None, metavar="URL",
                        help="also run artcache-remote: warm from this store with an empty local tier. "
                             "The benchmark adds entries to it and removes those it added afterwards")
    parser.add_argument("--out", default=None, help="markdown report path (default: print only)")
    parser.add_argument("--workdir", default=None, help="where the fresh cache dirs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the cache dirs of every run")
    # Internal: the child process and the info probe.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--info", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=ALL_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--register-backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))  # the working tree's artcache, installed or not
    if args.child or args.info:
        (child_main if args.child else info_main)(args)
        return
    compile_checkout()

    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t0 = time.perf_counter()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="artcache-warm-start-"))
    root.mkdir(parents=True, exist_ok=True)
    info_file = root / "info.json"
    subprocess.run([sys.executable, str(THIS), "--info", "--device", args.device, "--result", str(info_file)], check=True, cwd=REPO)
    info = json.loads(info_file.read_text())

    skipped = {m: f"{', '.join(p for p in MODELS[m] if importlib.util.find_spec(p) is None)} not installed"
               for m in args.models if any(importlib.util.find_spec(p) is None for p in MODELS[m])}
    variants = [v for v in ALL_VARIANTS if v != AC_REMOTE or args.remote]
    args.register_backend = not artcache_entry_point_installed()
    if args.register_backend:
        print("artcache is not installed (no torch_dynamo_backends entry point): children register it", flush=True)
    runnable = [m for m in args.models if m not in skipped]
    for model, why in skipped.items():
        print(f"skipping {model}: {why}", flush=True)

    load_before = os.getloadavg()[0]
    runs: list[Run] = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        for index, model in enumerate(runnable):
            runs.extend(run_model(args, repeat, model, repeat + index, root))
    load = (load_before, os.getloadavg()[0])
    if not args.keep and args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)

    write_report(render(args, info, runs, skipped, variants, load, started, time.perf_counter() - t0), args.out)


def write_report(report: str, out: str | None) -> None:
    """Write the markdown report to ``out`` (its folder made), or print it."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report)
        print(f"wrote {out}")
    else:
        print(report)


if __name__ == "__main__":
    main()
