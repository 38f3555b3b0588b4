"""Run-time conditions a fuzz program runs under, varied between the cold and the warm
process: CPU thread count, deterministic algorithms, default dtype, autocast, grad mode,
float32 matmul precision.

Half the programs keep the cold process's value (the warm process must hit, with the
compile tripwires on); the others change it (the warm process must miss, or hit only
where the condition provably cannot change the program: :func:`affects`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch

VALUES: dict[str, list[Any]] = {
    "threads": [1, 2, 3],
    "deterministic": [False, True],
    "default_dtype": ["float32", "float64"],
    "autocast": ["off", "bfloat16"],
    "grad_mode": [True, False],
    "matmul_precision": ["highest", "high", "medium"],
}


def choose(rng: random.Random, kind: str) -> dict[str, Any]:
    name = rng.choice(sorted(VALUES))
    cold = rng.choice(VALUES[name])
    warm = cold if rng.random() < 0.5 else rng.choice([v for v in VALUES[name] if v != cold])
    return {"name": name, "cold": cold, "warm": warm}


def changed(condition: dict[str, Any]) -> bool:
    return bool(condition["cold"] != condition["warm"])


def affects(condition: dict[str, Any], device: str, kind: str = "forward") -> bool:
    """Whether the condition can change the compiled program.  The thread count sizes the
    buffers of Inductor's C++ code only: a program all on a GPU runs none.  An optimizer's
    ``step`` sets grad mode itself (``torch.set_grad_enabled(differentiable)``, and the
    generator never makes a differentiable optimizer), so the ambient grad mode does not
    reach its graph; a hit there is then checked bitwise against a fresh compile."""
    if condition["name"] == "threads":
        return device == "cpu"
    if condition["name"] == "grad_mode" and kind == "optimizer":
        return False
    return True


@contextlib.contextmanager
def applied(name: str, value: Any, device: str) -> Iterator[None]:
    """Set one condition for the enclosed compile and run; restore it after."""
    if name == "threads":
        saved = torch.get_num_threads()
        torch.set_num_threads(int(value))
        try:
            yield
        finally:
            torch.set_num_threads(saved)
    elif name == "deterministic":
        saved_det = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(bool(value))
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
    elif name == "default_dtype":
        saved_dtype = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, value))
        try:
            yield
        finally:
            torch.set_default_dtype(saved_dtype)
    elif name == "autocast":
        context = torch.autocast(device, dtype=getattr(torch, value)) if value != "off" else contextlib.nullcontext()
        with context:
            yield
    elif name == "grad_mode":
        with torch.set_grad_enabled(bool(value)):
            yield
    elif name == "matmul_precision":
        saved_precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(value)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved_precision)
    else:
        raise ValueError(name)
