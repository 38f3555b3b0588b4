"""Small CUDA programs for the GPU warm-start tests (Triton pointwise, reduction,
LayerNorm, softmax and matmul kernels)."""

from __future__ import annotations

import torch
from torch import nn

from examples.mlp_demo import Block  # the main job's block: LayerNorm, two Linears, GELU


class Net(nn.Module):
    """MLP blocks, then a softmax and a row reduction: pointwise, reduction and
    persistent-reduction Triton kernels plus matmuls."""

    def __init__(self, width: int = 256, blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.head = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)
        p = torch.softmax(self.head(h), dim=-1)
        return p * h.sum(dim=-1, keepdim=True) + h.square().mean(dim=-1, keepdim=True)


class LongNames(nn.Module):
    """One pointwise kernel fusing many distinct ops: Inductor names a kernel after the ops
    it fuses, and this name is longer than the 150 characters Triton keeps in its file
    names (the case of two GPT-2 attention kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every value stays finite (outputs are compared bitwise, and NaN != NaN); the
        # rounding ops enter multiplied by zero, so they cannot flip between compiled and
        # eager code.
        y = torch.sigmoid(x).sin().cos().exp().tanh().neg().reciprocal().atan().asinh().erf()
        y = y.log1p().expm1().abs().sqrt().rsqrt()
        y = y + 0.0 * (y.floor() + y.ceil() + y.trunc())
        return ((y.clamp_min(0.5) / 4).square().sinh().cosh() * 2 - 1) / 3 + x

def make(width: int = 256, model: str = "net") -> nn.Module:
    torch.manual_seed(0)
    if model == "long_names":
        return LongNames().cuda()
    return Net(width).cuda()


def inputs(batch: int, width: int = 256, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(batch, width, device="cuda", generator=g)
