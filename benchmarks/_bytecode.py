"""Bytecode for the checkout's own modules, written before any timed child starts.

pip compiles a package's modules to bytecode when it installs them, and torch's come that
way.  A checkout has none, and where ``PYTHONDONTWRITEBYTECODE`` is set (the project's
machines set it) nothing writes them later: every child would compile artcache's modules
from source inside its timed window (about 50 ms of a warm first call on the CPU), a cost an
installed artcache does not pay.  ``scripts/gpu_setup.sh`` does the same on the GPU machine.
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_checkout() -> None:
    """Write the bytecode of artcache, the examples and the benchmarks (explicitly, which
    ``PYTHONDONTWRITEBYTECODE`` does not stop)."""
    for folder in ("artcache", "examples", "benchmarks"):
        compileall.compile_dir(str(REPO / folder), quiet=1)
