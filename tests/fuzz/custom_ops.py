"""Custom ops with autograd for the program fuzzer: defined in a source file (the key
digests their code, which needs one), registered once per process on import."""

from __future__ import annotations

from typing import Any

import torch

SHIFT = 0.25


@torch.library.custom_op("artcache_fuzz::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.tanh(x) * scale


@scaled_tanh.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def _tanh_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, scale = inputs
    ctx.save_for_backward(x)
    ctx.scale = scale


def _tanh_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
    (x,) = ctx.saved_tensors
    return grad * ctx.scale * (1 - torch.tanh(x) ** 2), None


scaled_tanh.register_autograd(_tanh_backward, setup_context=_tanh_setup)


@torch.library.custom_op("artcache_fuzz::shifted_mul", mutates_args=())
def shifted_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a + SHIFT) * b


@shifted_mul.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(a)


def _mul_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _mul_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = ctx.saved_tensors
    return grad * b, grad * (a + SHIFT)


shifted_mul.register_autograd(_mul_backward, setup_context=_mul_setup)
