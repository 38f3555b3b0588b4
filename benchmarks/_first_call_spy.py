"""Diagnostic spies for ``profile_first_call.py``: who compiles, builds or spawns, and from where.

cProfile on Python 3.12 attributes other threads' time to whatever the main thread is
running, so it cannot say which background work a warm start triggers.  These wrappers
record each call of a few expensive entry points (Triton code generation, Triton's C
helper builds, subprocesses, thread starts, torch.jit.script) with its duration, thread and
a short caller stack.  Installed only in profiling children; never part of a timed run.
"""

from __future__ import annotations

import functools
import importlib
import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

SPIED = (
    ("triton.compiler.code_generator", "CodeGenerator.__init__"),
    ("triton.compiler.compiler", "compile"),
    ("triton", "compile"),
    ("triton.runtime.build", "compile_module_from_src"),
    ("triton.runtime.build", "_build"),
    ("subprocess", "Popen.__init__"),
    ("threading", "Thread.start"),
    ("torch.jit", "script"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner._make_launchers"),
    ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner.precompile"),
    ("torch._inductor.async_compile", "AsyncCompile.triton"),
    ("torch._inductor.async_compile", "AsyncCompile.wait"),
)


class Spy:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.active = True

    def install(self) -> list[str]:
        installed = []
        for module_name, path in SPIED:
            try:
                owner: Any = importlib.import_module(module_name)
                *parents, attr = path.split(".")
                for part in parents:
                    owner = getattr(owner, part)
                original = getattr(owner, attr)
            except (ImportError, AttributeError):
                continue
            setattr(owner, attr, self._wrap(f"{module_name}.{path}", original))
            installed.append(f"{module_name}.{path}")
        return installed

    def _wrap(self, name: str, original: Any) -> Any:
        spy = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not spy.active:
                return original(*args, **kwargs)
            detail = _detail(name, args)  # before the call: what the cache held going in
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record = {
                    "name": name,
                    "seconds": round(time.perf_counter() - start, 4),
                    "thread": threading.current_thread().name,
                    "detail": detail,
                    "stack": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                              for f in traceback.extract_stack(limit=14)[:-1]],
                }
                with spy.lock:
                    spy.calls.append(record)

        return wrapper

    def write(self, path: str) -> None:
        self.active = False
        totals: dict[str, list[float]] = {}
        for call in self.calls:
            totals.setdefault(call["name"], []).append(call["seconds"])
        summary = {name: {"calls": len(v), "seconds": round(sum(v), 3)} for name, v in totals.items()}
        Path(path).write_text(json.dumps({"summary": summary, "calls": self.calls[:200]}, indent=1))


def _detail(name: str, args: tuple[Any, ...]) -> str:
    if name.endswith("compile") and "compiler" in name or name == "triton.compile":
        return _triton_cache_view(args[0] if args else None)
    if name.endswith("Popen.__init__") and len(args) > 1:
        return str(args[1])[:300]
    if name.endswith("CodeGenerator.__init__") and len(args) > 2:
        return str(getattr(args[2], "__name__", args[2]))[:200]
    if name.endswith("compile_module_from_src"):
        return str([a if isinstance(a, str) and len(a) < 100 else type(a).__name__ for a in args])[:300]
    return ""


def _triton_cache_view(src: Any) -> str:
    """Where Triton's file cache points and what it holds for this kernel (its group file)."""
    import os

    try:
        import triton

        cache_dir = triton.knobs.cache.dir
    except (ImportError, AttributeError):
        cache_dir = os.environ.get("TRITON_CACHE_DIR", "")
    kernel = str(getattr(getattr(src, "fn", None), "__name__", src))[:60]
    found = []
    if cache_dir and os.path.isdir(cache_dir):
        for sub in sorted(os.listdir(cache_dir)):
            d = os.path.join(cache_dir, sub)
            if not os.path.isdir(d):
                continue
            names = os.listdir(d)
            if any(n.startswith((kernel[:40], "__grp__" + kernel[:33])) for n in names):
                grp = [n for n in names if n.startswith("__grp__")]
                text = Path(d, grp[0]).read_text()[:400] if grp else ""
                found.append(f"{sub}: {sorted(names)} grp={text}")
    return f"cache_dir={cache_dir} kernel={kernel} matches={found[:3]}"[:2500]
