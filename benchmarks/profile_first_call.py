"""Where a warm start's first call spends its time: floor vs torch warm vs artcache warm.

    python benchmarks/profile_first_call.py --model gpt2 --device cuda --out DIR

A diagnostic, not a benchmark (profiling inflates every figure): it fills torch's caches
(torch-cold) and artcache's store (artcache-cold) with unprofiled children of
``warm_start.py``, then runs floor, torch-warm and artcache-warm once each under cProfile
and ``python -X importtime``.  It writes ``DIR/<model>-<variant>.prof.txt`` (cProfile of
the first-call window, by cumulative and by own time) and ``DIR/<model>.md``: each
variant's first call, the imports done inside that window, and the largest of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import warm_start as ws  # this directory's sibling script

START, END = "artcache-bench: first call starts", "artcache-bench: first call ends"


def run_child(model: str, variant: str, device: str, dirs: ws.Dirs, scratch: Path, *, profile: Path | None) -> dict:
    result = scratch / f"{model}-{variant}.json"
    command = [sys.executable]
    if profile is not None:
        command += ["-X", "importtime"]
    command += [str(ws.THIS), "--child", "--model", model, "--variant", variant, "--device", device,
                "--steps", "3", "--warmup", "1", "--result", str(result)]
    if not ws.artcache_entry_point_installed():
        command.append("--register-backend")
    if profile is not None:
        command += ["--profile", str(profile)]
    proc = subprocess.run(command, env=ws._child_env(dirs), cwd=ws.REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{model} {variant} failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    data["imports"] = window_imports(proc.stderr)
    return data


def window_imports(stderr: str) -> list[tuple[str, float]]:
    """Top-level imports (depth 0 of ``-X importtime``) done inside the first-call window,
    as (module, cumulative seconds)."""
    inside, found = False, []
    for line in stderr.splitlines():
        if line.startswith(START):
            inside = True
        elif line.startswith(END):
            break
        elif inside and line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|", 2)
            if cumulative.strip().isdigit() and not name.startswith("   "):  # one space: depth 0
                found.append((name.strip(), int(cumulative) / 1e6))
    return found


def report(model: str, runs: dict[str, dict]) -> str:
    lines = [f"# First-call profile: {model}", "",
             "Profiled children (cProfile + -X importtime): every time below is inflated.", "",
             "| variant | first call s | of which torch.compile() s | imports in window | their cumulative s "
             "| compiler-side modules imported | files added to TRITON_CACHE_DIR |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for variant, data in runs.items():
        imports = data["imports"]
        pulled = data.get("first_call_pulled_in") or {}
        lines.append(f"| {variant} | {data['first_call_s']:.2f} | {data['compile_call_s']:.2f} | {len(imports)} | "
                     f"{sum(s for _, s in imports):.2f} | {', '.join(pulled.get('compiler_modules', [])) or 'none'} "
                     f"| {pulled.get('triton_cache_files', '?')} |")
    for variant, data in runs.items():
        lines += ["", f"## Largest imports inside the window: {variant}", ""]
        lines += [f"- {name}: {seconds:.3f} s" for name, seconds in sorted(data["imports"], key=lambda i: -i[1])[:25]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2", choices=list(ws.MODELS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", required=True, help="directory for the report and the profiles")
    parser.add_argument("--artcache-only", action="store_true", help="profile artcache-warm alone (skip floor and torch)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="artcache-profile-"))

    def dirs(name: str, store: str | None = None) -> ws.Dirs:
        inductor, triton = ws._fresh_torch_dirs(scratch / name)
        return ws.Dirs(inductor, triton, store or "file://" + str(scratch / name / "unused-store"))

    store = "file://" + str(scratch / "store")
    torch_dirs = dirs("torch")
    profiled = [(ws.AC_WARM, dirs("ac-warm", store))]
    if not args.artcache_only:
        run_child(args.model, ws.TORCH_COLD, args.device, torch_dirs, scratch, profile=None)
        profiled = [(ws.FLOOR, dirs("floor")), (ws.TORCH_WARM, torch_dirs), *profiled]
    run_child(args.model, ws.AC_COLD, args.device, dirs("ac-cold", store), scratch, profile=None)
    runs = {}
    for variant, variant_dirs in profiled:
        runs[variant] = run_child(args.model, variant, args.device, variant_dirs, scratch,
                                  profile=out / f"{args.model}-{variant}.prof.txt")
        print(f"{args.model} {variant}: first call {runs[variant]['first_call_s']:.2f} s (profiled)", flush=True)
    (out / f"{args.model}.md").write_text(report(args.model, runs))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
