"""The warm-start benchmark's report: the markdown tables and ratios from its runs.

Split from ``warm_start.py`` (which runs the child processes) so that each file has one
job; ``Run`` is the record both share.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

FLOOR, TORCH_COLD, TORCH_WARM = "floor", "torch-cold", "torch-warm"
AC_COLD, AC_WARM, AC_REMOTE = "artcache-cold", "artcache-warm", "artcache-remote"


@dataclass
class Run:
    """One child process: what it was, what it measured, how it ended."""

    repeat: int
    model: str
    variant: str
    ok: bool
    wall_s: float  # spawn -> exit
    to_first_result_s: float | None = None  # spawn -> first result
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""



def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _cell(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += " (" + fmt.format(min(values)) + "-" + fmt.format(max(values)) + ")"
    return text


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


class Results:
    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs

    def values(self, model: str, variant: str, metric: Callable[[Run], float | None]) -> list[float]:
        out = []
        for run in self.runs:
            if run.ok and run.model == model and run.variant == variant:
                value = metric(run)
                if value is not None:
                    out.append(value)
        return out

    def median(self, model: str, variant: str, metric: Callable[[Run], float | None]) -> float | None:
        return _median(self.values(model, variant, metric))


def first_call(run: Run) -> float | None:
    return run.data.get("first_call_s")


def to_first_result(run: Run) -> float | None:
    return run.to_first_result_s


def whole_child(run: Run) -> float:
    return run.wall_s


def steady(run: Run) -> float | None:
    return run.data.get("steady_step_s")


def after_compile_call(run: Run) -> float | None:
    if "first_call_s" not in run.data:
        return None
    return run.data["first_call_s"] - run.data["compile_call_s"]


def steady_min(run: Run) -> float | None:
    return run.data.get("steady_step_min_s")


def render(args: argparse.Namespace, info: dict[str, Any], runs: list[Run], skipped: dict[str, str],
           variants: Sequence[str], load: tuple[float, float], started: str, elapsed: float) -> str:
    res = Results(runs)
    models = [m for m in args.models if m not in skipped]
    device = args.device
    lines = [f"# Warm-start benchmark: artcache vs torch.compile ({device})", ""]
    machine = (f"{info.get('gpu')} x{info.get('gpu_count')} ({info.get('gpu_capability')}, CUDA {info.get('cuda')}), "
               if device == "cuda" else "")
    machine += f"{info['cpu_count']} CPU cores ({info['cpu_model']}), {info['platform']}"
    versions = [f"python {info['python']}", f"torch {info['torch']}"]
    for name in ("triton", "pytorch-triton", "transformers", "torchvision", "artcache"):
        if name in info:
            versions.append(f"{name} {info[name]}")
    lines += [
        f"- date: {started} (took {elapsed / 60:.1f} min)",
        f"- machine: {machine}; torch threads {info['torch_threads']}",
        "- versions: " + ", ".join(versions) + f"; artcache tree {_git_rev()}",
        "- command: `" + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]) + "`",
        f"- torch.compile mode: {args.mode or 'default'}; repeats: {args.repeats} (median, range in parentheses); "
        f"steady step: median of {args.steps} calls after {args.warmup} warm-up calls"
        + (f"; torch.set_num_threads({args.threads})" if args.threads else ""),
        f"- 1-min load average at start / end: {load[0]:.2f} / {load[1]:.2f}",
        "- `backend=\"artcache\"` resolved " + ("by registering it in each child (artcache not installed)"
                                                if args.register_backend else "through the installed entry point"),
    ]
    if skipped:
        lines.append("- skipped: " + "; ".join(f"{m} ({why})" for m, why in skipped.items()))
    failed = [r for r in runs if not r.ok]
    if failed:
        lines.append(f"- **{len(failed)} child process(es) failed**; see the end of this file")
    lines += [
        "",
        "Each number comes from its own fresh process. *first call*: `torch.compile(...)` + the first",
        "step, to the result (synchronized on CUDA). *to first result*: from spawning the process to that",
        "same point (interpreter, imports, model build included). torch-warm reuses the cache dirs",
        "torch-cold filled; artcache-warm reuses artcache-cold's store with new empty torch dirs.",
        "The `torch.compile()` call itself is inside *first call*: it resolves the backend (torch's",
        "backend registry imports its backend modules; artcache comes through its entry point), and",
        "Inductor imports its compiler there. `torch._dynamo` is imported before the clock in every",
        "child, as importing transformers or torchvision does anyway, and every child runs `gc.collect()`",
        "just before its clock (the collections inside the window are in *Every run*). `examples/mlp_demo.py` starts",
        "its clock after `torch.compile()`; that window is the *after torch.compile() returned* table below.",
        "",
    ]
    if not models:
        lines.append("No model ran.")
        return "\n".join(lines) + "\n"

    header = "| model | " + " | ".join(variants) + " |"
    rule = "|---|" + "---:|" * len(variants)

    def table(title: str, metric: Callable[[Run], float | None], fmt: str = "{:.2f}", scale: float = 1.0) -> None:
        lines.extend([f"## {title}", "", header, rule])
        for model in models:
            cells = [_cell([v * scale for v in res.values(model, variant, metric)], fmt) for variant in variants]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")

    table("First call (s)", first_call)
    lines.extend(["## Ratios (of medians)", "",
                  "| model | measure | artcache warm / floor | artcache warm / torch warm | artcache cold / torch cold |"
                  + (" artcache remote / artcache warm |" if AC_REMOTE in variants else ""),
                  "|---|---|---:|---:|---:|" + ("---:|" if AC_REMOTE in variants else "")])
    for model in models:
        for label, metric in (("first call", first_call), ("to first result", to_first_result)):
            m = {v: res.median(model, v, metric) for v in variants}
            row = (f"| {model} | {label} | {_ratio(m[AC_WARM], m[FLOOR])} | {_ratio(m[AC_WARM], m[TORCH_WARM])} | "
                   f"{_ratio(m[AC_COLD], m[TORCH_COLD])} |")
            if AC_REMOTE in variants:
                row += f" {_ratio(m[AC_REMOTE], m[AC_WARM])} |"
            lines.append(row)
    lines.append("")
    lines.extend(["## Steady-state step time (ms)", "",
                  "Per-call time after warm-up, one process per variant; the check is artcache-warm (a loaded",
                  "entry) against torch-cold (a fresh compile), target within 3%. floor is eager. Cells are the",
                  "median over repeats of each process's median call; the *fastest call* ratio uses each process's",
                  "fastest call instead, which background load on the machine cannot inflate.",
                  "", "| model | artcache warm / torch cold | same, fastest call | " + " | ".join(variants) + " |",
                  "|---|---:|---:|" + "---:|" * len(variants)])
    for model in models:
        ratio = _ratio(res.median(model, AC_WARM, steady), res.median(model, TORCH_COLD, steady))
        ratio_min = _ratio(res.median(model, AC_WARM, steady_min), res.median(model, TORCH_COLD, steady_min))
        cells = [_cell([v * 1e3 for v in res.values(model, variant, steady)]) for variant in variants]
        lines.append(f"| {model} | {ratio} | {ratio_min} | " + " | ".join(cells) + " |")
    lines.append("")
    table("First call after torch.compile() returned (s)", after_compile_call)
    table("To first result: spawn to first result (s)", to_first_result)
    table("Whole child: spawn to exit, incl. the steady-state loop (s)", whole_child)

    lines.extend(["## Cache events and correctness", "",
                  "artcache counters are taken right after the first call (a warm run should show only hits).",
                  "*pulled in*: per run, how many of Inductor's compiler-side modules (`compile_fx`, `graph`, `lowering`,",
                  "`select_algorithm`, `ir`, `scheduler`, `debug`, `decomposition`) the first call had imported, and how",
                  "many files it added to the child's `TRITON_CACHE_DIR` (kernels or launchers Triton built or torch emitted).",
                  "", "| model | variant | runs ok | artcache hits / misses / saves | pulled in: modules, Triton cache files | errors, uncacheable, warnings | check |",
                  "|---|---|---:|---|---|---|---|"])
    for model in models:
        for variant in variants:
            mine = [r for r in runs if r.model == model and r.variant == variant]
            ok = [r for r in mine if r.ok]
            lines.append(f"| {model} | {variant} | {len(ok)}/{len(mine)} | {_events(ok)} | {_pulled_in(ok)} | {_problems(ok)} | {_check(ok)} |")
    lines.append("")

    lines.extend(["## Every run", "", "| repeat | model | variant | first call s | of which torch.compile() s | to first result s | child s | warm-up calls s | steady ms (fastest) | exit s | import torch s | GC in first call: full, s |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"])
    for r in runs:
        d = r.data
        if r.ok:
            lines.append(f"| {r.repeat} | {r.model} | {r.variant} | {d['first_call_s']:.2f} | {d['compile_call_s']:.2f} | "
                         f"{r.to_first_result_s:.2f} | {r.wall_s:.2f} | {d['warmup_s']:.2f} | {fmt_ms(d.get('steady_step_s'))} "
                         f"({fmt_ms(d.get('steady_step_min_s'))}) | {d['teardown_s']:.2f} | {d['import_torch_s']:.2f} | {_gc(d)} |")
        else:
            lines.append(f"| {r.repeat} | {r.model} | {r.variant} | failed | | | {r.wall_s:.2f} | | | | | |")
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"repeat {r.repeat}, {r.model}, {r.variant}:", "", "```", r.error, "```", ""]
    return "\n".join(lines) + "\n"


def _gc(data: dict[str, Any]) -> str:
    watch = data.get("gc_in_window")  # absent in results from before it was recorded
    return f"{watch['full']}, {watch['s']:.2f}" if watch else ""


def _events(runs: list[Run]) -> str:
    stats = [r.data["artcache_first_call"] for r in runs if "artcache_first_call" in r.data]
    if not stats:
        return "-"
    return "; ".join(f"{s['hits']} / {sum(s['misses'].values())} / {s['saves']}" for s in stats)


def _pulled_in(runs: list[Run]) -> str:
    seen = [r.data["first_call_pulled_in"] for r in runs if "first_call_pulled_in" in r.data]
    return "; ".join(f"{len(p['compiler_modules'])}, {p['triton_cache_files']}" for p in seen) or "-"


def _problems(runs: list[Run]) -> str:
    found: list[str] = []
    for r in runs:
        stats = r.data.get("artcache") or {}
        for name in ("errors", "uncacheable"):
            for key, count in (stats.get(name) or {}).items():
                found.append(f"{name} {key} x{count}")
        found.extend(f"warning: {w}" for w in stats.get("warnings", []))
    unique = list(dict.fromkeys(found))
    return "<br>".join(text.replace("|", "\\|") for text in unique) or "-"


def _check(runs: list[Run]) -> str:
    errs = [r.data["max_abs_err_vs_eager"] for r in runs if "max_abs_err_vs_eager" in r.data]
    if errs:
        return f"max abs err vs eager {max(errs):.1e}"
    losses = [r.data["first_output"] for r in runs if "first_output" in r.data]
    return ("first loss " + ", ".join(f"{v:.4f}" for v in losses)) if losses else "-"


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "artcache"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in artcache/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- main ---------------------------------------------------------------------------------
