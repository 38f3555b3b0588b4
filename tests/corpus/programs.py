"""A corpus of programs compared eager vs cold-compiled vs loaded (DESIGN.md "Tests").

Each program builds its callable and inputs from a seed, so the cold and the warm process
build identical ones.  ``train`` programs also compare gradients of every parameter and
input; ``dynamic`` marks dimension 0 of the first input dynamic and runs a second size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Program:
    name: str
    build: Callable[[], tuple[Callable[..., Any], list[torch.Tensor]]]
    train: bool = False
    dynamic: bool = False
    second_size: int = 0  # for dynamic programs: dim-0 size of the second call
    tags: tuple[str, ...] = field(default_factory=tuple)


def _rand(*shape: int, seed: int = 0, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def _module(m: nn.Module, *inputs: torch.Tensor) -> tuple[Callable[..., Any], list[torch.Tensor]]:
    return m, list(inputs)


def _seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory()


class Block(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class TinyAttention(nn.Module):
    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class GraphBreak(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        torch._dynamo.graph_break()
        return self.b(y).sigmoid()



class HeadOutput:
    """A return value built with attributes, as a Hugging Face ``ModelOutput`` is (Dynamo
    counts the attribute stores as side effects its transformed code replays)."""

    def __init__(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        self.hidden, self.logits = hidden, logits


class ObjectHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        h = self.a(x).tanh()
        return HeadOutput(h, self.b(h))


def _passes_through(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator as Hugging Face puts on ``forward`` (``functools.wraps``): the module's
    ``forward`` is the wrapper, which calls the function from its closure."""
    @functools.wraps(func)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return func(self, *args, **kwargs)

    return wrapper


class DecoratedHead(ObjectHead):
    @_passes_through
    def forward(self, x: torch.Tensor) -> HeadOutput:
        h = self.a(x).tanh()
        return HeadOutput(h, self.b(h))


def _views(x: torch.Tensor) -> torch.Tensor:
    return x.t().reshape(-1, 4)[1:, ::2].contiguous() * 2


def _alias_out(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return x.view(-1), x.t(), x[1]


def _mutate_input(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x.add_(y)
    return (x * 2).sum(0)


def _mutate_view_of_input(x: torch.Tensor) -> torch.Tensor:
    x[:, 0].mul_(3)
    return x.cos()


def _reductions(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return x.sum(1), x.amax(0), x.var(1), x.logsumexp(-1), torch.cumsum(x, 0), x.argmax(1)


def _softmax_chain(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x @ x.t(), dim=-1).exp().mean(0)


def _rng(x: torch.Tensor) -> torch.Tensor:
    return F.dropout(x, 0.3, training=True) + torch.rand_like(x)


def _index_ops(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x[idx].sum(0) + torch.gather(x, 1, idx.view(-1, 1).expand(-1, x.shape[1]) % x.shape[1]).mean()


def _scatter(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.zeros(8, x.shape[1]).index_add(0, idx % 8, x)


def _where_mask(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x.sqrt(), -x.abs().log1p())


def _int_math(x: torch.Tensor) -> torch.Tensor:
    return (x * 7 + 3) % 5 // 2


def _dyn_pointwise(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * x.shape[0]).sum(0)


def _dyn_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ w).mean(0)


def _dtype_mix(x: torch.Tensor) -> torch.Tensor:
    return (x.to(torch.float64) ** 2).sum().to(torch.float32) + x.to(torch.bfloat16).float().mean()


def _complex_shape(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0).expand(3, -1, -1).permute(1, 2, 0).flatten(1).narrow(1, 2, 5)


def _cat_stack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cat([x, y], 0), torch.cat([y, x], 0)]).sum(0)


def _empty_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:0] + 1, torch.ones_like(x[:, :0])


def _programs() -> list[Program]:
    P = Program
    return [
        P("mlp_infer", lambda: _module(_seeded(lambda: nn.Sequential(Block(), Block())).eval(), _rand(8, 32)), tags=("mlp",)),
        P("mlp_train", lambda: _module(_seeded(lambda: nn.Sequential(Block(), Block())), _rand(8, 32, grad=True)), train=True),
        P("linear_relu_train", lambda: _module(_seeded(lambda: nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))), _rand(4, 16)), train=True),
        P("views", lambda: (_views, [_rand(8, 4)])),
        P("views_train", lambda: (_views, [_rand(8, 4, grad=True)]), train=True),
        P("alias_outputs", lambda: (_alias_out, [_rand(4, 4)])),
        P("mutate_input", lambda: (_mutate_input, [_rand(4, 3), _rand(4, 3, seed=1)])),
        P("mutate_view_of_input", lambda: (_mutate_view_of_input, [_rand(4, 3)])),
        P("reductions", lambda: (_reductions, [_rand(6, 7)])),
        P("softmax_chain", lambda: (_softmax_chain, [_rand(5, 9)])),
        P("softmax_chain_train", lambda: (_softmax_chain, [_rand(5, 9, grad=True)]), train=True),
        P("conv2d", lambda: _module(_seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3))).eval(), _rand(2, 3, 8, 8))),
        P("conv2d_train", lambda: _module(_seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh())), _rand(2, 3, 6, 6)), train=True),
        P("conv1d_pool", lambda: _module(_seeded(lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.MaxPool1d(2), nn.Flatten())).eval(), _rand(2, 2, 12))),
        P("batchnorm_train", lambda: _module(_seeded(lambda: nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))).train(), _rand(6, 8)), train=True, tags=("buffers",)),
        P("batchnorm_eval", lambda: _module(_seeded(lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))).eval(), _rand(1, 2, 4, 4))),
        P("attention", lambda: _module(_seeded(TinyAttention).eval(), _rand(2, 6, 32))),
        P("attention_train", lambda: _module(_seeded(TinyAttention), _rand(2, 6, 32)), train=True),
        P("mha_train", lambda: _module(_seeded(lambda: nn.MultiheadAttention(16, 2, batch_first=True)), _rand(2, 5, 16), _rand(2, 5, 16, seed=1), _rand(2, 5, 16, seed=2)), train=True),
        P("dropout_train", lambda: _module(_seeded(lambda: nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.4))).train(), _rand(4, 16)), train=True, tags=("rng",)),
        P("rng_ops", lambda: (_rng, [_rand(5, 5)]), tags=("rng",)),
        P("indexing", lambda: (_index_ops, [_rand(10, 4), torch.tensor([3, 1, 4, 1, 5])])),
        P("scatter_add", lambda: (_scatter, [_rand(5, 3), torch.tensor([9, 2, 6, 5, 3])])),
        P("where_mask", lambda: (_where_mask, [_rand(6, 6)])),
        P("int_math", lambda: (_int_math, [torch.arange(24).view(4, 6)])),
        P("dtype_mix", lambda: (_dtype_mix, [_rand(4, 8)])),
        P("shape_ops", lambda: (_complex_shape, [_rand(3, 4)])),
        P("cat_stack", lambda: (_cat_stack, [_rand(2, 3), _rand(2, 3, seed=1)])),
        P("zero_size", lambda: (_empty_like, [_rand(3, 4)])),
        P("graph_break", lambda: _module(_seeded(GraphBreak).eval(), _rand(4, 16))),
        P("graph_break_train", lambda: _module(_seeded(GraphBreak), _rand(4, 16)), train=True),
        P("dynamic_pointwise", lambda: (_dyn_pointwise, [_rand(6, 3)]), dynamic=True, second_size=9),
        P("dynamic_matmul", lambda: (_dyn_matmul, [_rand(5, 8), _rand(8, 4, seed=1)]), dynamic=True, second_size=11),
        P("dynamic_mlp_train", lambda: _module(_seeded(lambda: nn.Sequential(nn.Linear(8, 8), nn.GELU())), _rand(4, 8)), train=True, dynamic=True, second_size=7),
    ]


PROGRAMS: dict[str, Program] = {p.name: p for p in _programs()}
