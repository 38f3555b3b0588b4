"""A seeded generator of random tensor programs (in the spirit of torchfuzz).

A program is plain data (JSON-able): its inputs' shapes and dtypes and a list of ops, each
reading earlier values by index.  :func:`interpret` runs it; ``torch.compile`` traces the
interpreter, so every program becomes one Dynamo graph.  Being data, a failing program is
saved as a reproducer file and re-run anywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

FLOATS = ("float32", "float64", "bfloat16")

UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": torch.sin, "tanh": torch.tanh, "relu": torch.relu, "neg": torch.neg, "abs": torch.abs,
    "sigmoid": torch.sigmoid, "exp_clamped": lambda x: torch.exp(x.clamp(-5, 5)), "square": torch.square,
    "log1p_abs": lambda x: torch.log1p(x.abs()),
}
BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "mul": torch.mul, "sub": torch.sub, "maximum": torch.maximum,
    "where_gt": lambda a, b: torch.where(a > b, a, b),
}
REDUCE: dict[str, Callable[[torch.Tensor, int, bool], torch.Tensor]] = {
    "sum": lambda x, d, k: x.sum(d, keepdim=k), "amax": lambda x, d, k: x.amax(d, keepdim=k),
    "mean": lambda x, d, k: x.float().mean(d, keepdim=k).to(x.dtype), "softmax": lambda x, d, k: x.float().softmax(d).to(x.dtype),
}


def _view(x: torch.Tensor, kind: str, arg: int) -> torch.Tensor:
    if kind == "transpose":
        return x.transpose(0, -1)
    if kind == "flatten":
        return x.flatten()
    if kind == "unsqueeze":
        return x.unsqueeze(arg % (x.dim() + 1))
    if kind == "slice":
        return x[::2] if x.dim() else x
    if kind == "permute":
        return x.permute(*reversed(range(x.dim())))
    raise ValueError(kind)


def interpret(program: dict[str, Any], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    values = list(inputs)
    for op in program["ops"]:
        kind, args = op[0], op[1:]
        if kind == "unary":
            values.append(UNARY[args[0]](values[args[1]]))
        elif kind == "binary":
            values.append(BINARY[args[0]](values[args[1]], values[args[2]]))
        elif kind == "scale":
            values.append(values[args[0]] * args[1] + args[2])
        elif kind == "reduce":
            values.append(REDUCE[args[0]](values[args[1]], args[2], args[3]))
        elif kind == "view":
            values.append(_view(values[args[1]], args[0], args[2]))
        elif kind == "matmul":
            values.append(values[args[0]] @ values[args[1]])
        elif kind == "index":
            values.append(values[args[0]].index_select(0, values[args[1]]))
        elif kind == "cast":
            values.append(values[args[0]].to(getattr(torch, args[1])))
        else:
            raise ValueError(kind)
    return [values[i] for i in program["outputs"]]


def make_inputs(program: dict[str, Any], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for spec in program["inputs"]:
        if spec["dtype"] == "int64":
            out.append(torch.randint(0, spec["high"], spec["shape"], generator=g))
        else:
            out.append(torch.randn(spec["shape"], generator=g).to(getattr(torch, spec["dtype"])))
    return out


def generate(seed: int, *, max_ops: int = 8) -> dict[str, Any]:
    """A random well-typed program; shapes are tracked on meta tensors while generating."""
    rng = random.Random(seed)
    dtype = rng.choice(FLOATS)
    rank = rng.choice((1, 2, 3))
    shape = [rng.randint(2, 7) for _ in range(rank)]
    program: dict[str, Any] = {"seed": seed, "inputs": [{"shape": shape, "dtype": dtype}], "ops": [],
                               "dynamic": rng.random() < 0.3, "outputs": []}
    metas = [torch.empty(shape, dtype=getattr(torch, dtype), device="meta")]

    def add_input(spec: dict[str, Any]) -> int:
        program["inputs"].append(spec)
        meta_dtype = torch.int64 if spec["dtype"] == "int64" else getattr(torch, spec["dtype"])
        metas.insert(len(program["inputs"]) - 1, torch.empty(spec["shape"], dtype=meta_dtype, device="meta"))
        # inserting shifts op-produced values: renumber references made so far
        for op in program["ops"]:
            _shift(op, len(program["inputs"]) - 1)
        return len(program["inputs"]) - 1

    for _ in range(rng.randint(2, max_ops)):
        src = rng.randrange(len(metas))
        x = metas[src]
        if x.dtype == torch.int64:
            continue
        choice = rng.choice(("unary", "binary", "scale", "reduce", "view", "matmul", "index", "cast"))
        op: list[Any]
        if choice == "unary":
            op = ["unary", rng.choice(sorted(UNARY)), src]
        elif choice == "binary":
            same = [i for i, m in enumerate(metas) if m.shape == x.shape and m.dtype == x.dtype]
            op = ["binary", rng.choice(sorted(BINARY)), src, rng.choice(same)]
        elif choice == "scale":
            op = ["scale", src, round(rng.uniform(-2, 2), 3), round(rng.uniform(-1, 1), 3)]
        elif choice == "reduce" and x.dim() > 0:
            op = ["reduce", rng.choice(sorted(REDUCE)), src, rng.randrange(x.dim()), rng.random() < 0.5]
        elif choice == "view" and x.dim() > 0:
            op = ["view", rng.choice(("transpose", "flatten", "unsqueeze", "slice", "permute")), src, rng.randint(0, 3)]
        elif choice == "matmul" and x.dim() >= 1 and x.dtype != torch.bfloat16:
            w = add_input({"shape": [x.shape[-1], rng.randint(2, 6)], "dtype": str(x.dtype).removeprefix("torch.")})
            src += 1 if src >= w else 0
            op = ["matmul", src, w]
        elif choice == "index" and x.dim() >= 1:
            idx = add_input({"shape": [rng.randint(1, 5)], "dtype": "int64", "high": x.shape[0]})
            src += 1 if src >= idx else 0
            op = ["index", src, idx]
        elif choice == "cast":
            op = ["cast", src, rng.choice(FLOATS)]
        else:
            continue
        metas.append(interpret({"ops": [op], "outputs": [-1]}, metas)[0])
        program["ops"].append(op)
    n_inputs = len(program["inputs"])
    produced = list(range(n_inputs, len(metas)))
    program["outputs"] = produced[-2:] if produced else [0]
    return program


def _shift(op: list[Any], new_index: int) -> None:
    """After inserting input ``new_index``, bump every value reference at or above it."""
    kind = op[0]
    refs = {"unary": (2,), "binary": (2, 3), "scale": (1,), "reduce": (2,), "view": (2,),
            "matmul": (1, 2), "index": (1, 2), "cast": (1,)}[kind]
    for pos in refs:
        if op[pos] >= new_index:
            op[pos] += 1
