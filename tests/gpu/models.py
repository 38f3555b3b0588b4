"""Small CUDA programs for the GPU warm-start tests (Triton pointwise, reduction,
LayerNorm, softmax and matmul kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from examples.mlp_demo import (
    Block,  # the main job's block: LayerNorm, two Linears, GELU
)


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

class VocabLoss(nn.Module):
    """GPT-2 training's loss (transformers' ``ForCausalLMLoss``: labels padded and shifted,
    cross-entropy over the 50,257-word vocabulary, 4 x 256 tokens).  Its backward is a
    single-config reduction kernel heavy enough in registers that torch's
    ``_dynamic_scale_rblock`` compiles a candidate with half the reduction block, and the
    first run benchmarks the two (on the H100: 49 registers at R0_BLOCK 2048)."""

    def __init__(self, width: int = 256, vocab: int = 50257) -> None:
        super().__init__()
        self.proj = nn.Linear(width, vocab, bias=False)
        g = torch.Generator().manual_seed(2)
        self.register_buffer("labels", torch.randint(0, vocab, (4, 256), generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.repeat(16, 1).view(4, 256, -1)  # 64 inputs -> 1,024 tokens
        logits = self.proj(h).float()
        labels = F.pad(self.labels, (0, 1), value=-100)[..., 1:].contiguous()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


class GPT2Logits(nn.Module):
    """GPT-2 small (transformers, from its config: random weights, nothing downloaded)
    returning its logits, so the compiled callable returns one tensor."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.lm = GPT2LMHeadModel(GPT2Config(use_cache=False))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids).logits


def make(width: int = 256, model: str = "net") -> nn.Module:
    torch.manual_seed(0)
    if model == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None).cuda().eval()
    if model == "gpt2":
        return GPT2Logits().cuda().eval()
    if model == "long_names":
        return LongNames().cuda()
    if model == "vocab_loss":
        return VocabLoss(width).cuda()
    return Net(width).cuda()


def inputs(batch: int, width: int = 256, seed: int = 1, model: str = "net") -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    if model == "resnet50":  # images: the batch size divided by 8 (64 -> 8 images)
        return torch.randn(max(1, batch // 8), 3, 224, 224, device="cuda", generator=g)
    if model == "gpt2":  # token ids: 2 sequences of 128
        return torch.randint(0, 50257, (2, 128), device="cuda", generator=g)
    return torch.randn(batch, width, device="cuda", generator=g)
