"""A seeded generator of random tensor programs (in the spirit of torchfuzz).

A program is plain data (JSON-able): its kind, its inputs' shapes, dtypes and grad flags,
a list of ops each reading earlier values by index, and the run-time condition it runs
under in the cold and in the warm process (``conditions.py``).  :func:`interpret` runs the
ops; ``torch.compile`` traces the interpreter, so a forward becomes one Dynamo graph.
Being data, a failing program is saved as a reproducer file and re-run anywhere.

Kinds: ``forward`` (an inference call), ``training`` (forward and backward: outputs and
the gradients of the inputs that require them), ``optimizer`` (a compiled
``optimizer.step``, run twice).  Ops cover elementwise math, reductions, views, matmul,
gathers, casts, factories (their dtype follows the default dtype), in-place updates of
intermediates, mutation of inputs, outputs that alias inputs, and two custom ops with
autograd formulas (``custom_ops.py``).  ``dynamic`` programs mark the first input's first
dimension dynamic and are called a second time with that dimension one larger.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from . import conditions
from . import custom_ops  # noqa: F401 - registers the artcache_fuzz ops

FLOATS = ("float32", "float64", "bfloat16")
KINDS = ("forward", "training", "optimizer")

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
VIEWS = ("transpose", "flatten", "unsqueeze", "slice", "permute")
# Value references of each op kind: positions in the op list.
REFS = {"unary": (2,), "binary": (2, 3), "scale": (1,), "reduce": (2,), "view": (2,), "matmul": (1, 2),
        "index": (1, 2), "cast": (1,), "factory": (1,), "inplace": (1,), "mutate": (1,), "custom": (2, 3)}


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


def _custom(name: str, a: torch.Tensor, b: torch.Tensor | None, scale: float) -> torch.Tensor:
    if name == "scaled_tanh":
        return torch.ops.artcache_fuzz.scaled_tanh(a, scale)
    return torch.ops.artcache_fuzz.shifted_mul(a, b)


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
        elif kind == "factory":  # a tensor of the default dtype: promotion follows it
            x = values[args[0]]
            values.append(x + torch.full(x.shape[-1:], args[1], device=x.device))
        elif kind == "inplace":  # an intermediate updated in place
            values.append(values[args[0]].clone().mul_(args[1]).add_(args[2]))
        elif kind == "mutate":  # an input mutated in place; the value is that input
            values.append(values[args[0]].mul_(args[1]))
        elif kind == "custom":
            b = values[args[2]] if args[0] == "shifted_mul" else None
            values.append(_custom(args[0], values[args[1]], b, args[3]))
        else:
            raise ValueError(kind)
    return [values[i] for i in program["outputs"]]


def make_inputs(program: dict[str, Any], seed: int, device: str = "cpu", *, grow: int = 0) -> list[torch.Tensor]:
    """The program's inputs, independent of the default dtype; ``grow`` adds that much to
    the first input's first dimension (the second call of a dynamic program)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, spec in enumerate(program["inputs"]):
        shape = list(spec["shape"])
        if i == 0 and grow and shape:
            shape[0] += grow
        if spec["dtype"] == "int64":
            t = torch.randint(0, spec["high"], shape, generator=g)
        else:
            t = torch.randn(shape, generator=g, dtype=torch.float32).to(getattr(torch, spec["dtype"]))
        t = t.to(device)
        out.append(t.requires_grad_() if spec.get("grad") else t)
    return out


def _meta(spec: dict[str, Any]) -> torch.Tensor:
    dtype = torch.int64 if spec["dtype"] == "int64" else getattr(torch, spec["dtype"])
    return torch.empty(spec["shape"], dtype=dtype, device="meta")


def generate(seed: int, *, max_ops: int = 8, device: str = "cpu") -> dict[str, Any]:
    """A random well-typed program; shapes are tracked on meta tensors while generating."""
    rng = random.Random(seed)
    kind = rng.choices(KINDS, weights=(45, 35, 20))[0]
    program: dict[str, Any] = {"seed": seed, "kind": kind, "device": device, "inputs": [], "ops": [], "outputs": [],
                               "dynamic": False}
    if kind == "optimizer":
        program["optimizer"] = _optimizer(rng)
    else:
        _ops(program, rng, max_ops, training=kind == "training")
    program["condition"] = conditions.choose(rng, kind)
    return program


def _optimizer(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(("sgd", "adam", "adamw", "rmsprop", "adagrad"))
    shapes = [[rng.randint(2, 9) for _ in range(rng.choice((1, 2)))] for _ in range(rng.randint(1, 4))]
    return {"name": name, "lr": round(rng.uniform(1e-3, 1e-1), 4), "params": shapes, "steps": 2,
            "momentum": rng.choice((0.0, 0.9)) if name in ("sgd", "rmsprop") else None,
            "weight_decay": rng.choice((0.0, 0.01))}


def _ops(program: dict[str, Any], rng: random.Random, max_ops: int, *, training: bool) -> None:
    dtype = rng.choice(FLOATS)
    rank = rng.choice((1, 2, 3))
    shape = [rng.randint(2, 7) for _ in range(rank)]
    program["inputs"].append({"shape": shape, "dtype": dtype, "grad": training})
    program["dynamic"] = rng.random() < 0.3
    metas = [_meta(program["inputs"][0])]
    extra_outputs: list[int] = []  # values that alias or are inputs, maybe returned

    def add_input(spec: dict[str, Any]) -> int:
        program["inputs"].append(spec)
        index = len(program["inputs"]) - 1
        metas.insert(index, _meta(spec))
        for op in program["ops"]:  # inserting shifts op-produced values: renumber
            for pos in REFS[op[0]]:
                if isinstance(op[pos], int) and op[pos] >= index:
                    op[pos] += 1
        extra_outputs[:] = [i + 1 if i >= index else i for i in extra_outputs]
        return index

    for _ in range(rng.randint(2, max_ops)):
        src = rng.randrange(len(metas))
        x = metas[src]
        if x.dtype == torch.int64:
            continue
        n_inputs = len(program["inputs"])
        choice = rng.choice(("unary", "binary", "scale", "reduce", "view", "matmul", "index", "cast", "factory",
                             "inplace", "mutate", "alias", "custom"))
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
        elif choice in ("view", "alias") and x.dim() > 0:
            if choice == "alias":  # a view of an input, returned: the output aliases it
                src = rng.randrange(n_inputs)
                if metas[src].dtype == torch.int64 or metas[src].dim() == 0:
                    continue
                extra_outputs.append(len(metas))
            op = ["view", rng.choice(VIEWS), src, rng.randint(0, 3)]
        elif choice == "matmul" and x.dim() >= 1 and x.dtype != torch.bfloat16:
            w = add_input({"shape": [x.shape[-1], rng.randint(2, 6)], "dtype": str(x.dtype).removeprefix("torch."),
                           "grad": training and rng.random() < 0.5})
            src += 1 if src >= w else 0
            op = ["matmul", src, w]
        elif choice == "index" and x.dim() >= 1:
            idx = add_input({"shape": [rng.randint(1, 5)], "dtype": "int64", "high": x.shape[0]})
            src += 1 if src >= idx else 0
            op = ["index", src, idx]
        elif choice == "cast":
            op = ["cast", src, rng.choice(FLOATS)]
        elif choice == "factory" and x.dim() >= 1:
            op = ["factory", src, round(rng.uniform(-1, 1), 3)]
        elif choice == "inplace":
            op = ["inplace", src, round(rng.uniform(-2, 2), 3), round(rng.uniform(-1, 1), 3)]
        elif choice == "mutate" and not training:
            src = rng.randrange(n_inputs)
            if metas[src].dtype == torch.int64:
                continue
            extra_outputs.append(len(metas))
            op = ["mutate", src, round(rng.uniform(0.5, 1.5), 3)]
        elif choice == "custom" and x.dtype != torch.bfloat16:
            if rng.random() < 0.5:
                op = ["custom", "scaled_tanh", src, None, round(rng.uniform(0.5, 2), 3)]
            else:
                same = [i for i, m in enumerate(metas) if m.shape == x.shape and m.dtype == x.dtype]
                op = ["custom", "shifted_mul", src, rng.choice(same), None]
        else:
            continue
        metas.append(interpret({"ops": [op], "outputs": [-1]}, metas)[0])
        program["ops"].append(op)
    n_inputs = len(program["inputs"])
    produced = list(range(n_inputs, len(metas)))
    outputs = produced[-2:] if produced else [0]
    outputs += [i for i in extra_outputs if i not in outputs and rng.random() < 0.7]
    program["outputs"] = outputs
