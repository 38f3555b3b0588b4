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


def make(width: int = 256) -> nn.Module:
    torch.manual_seed(0)
    return Net(width).cuda()


def inputs(batch: int, width: int = 256, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(batch, width, device="cuda", generator=g)
