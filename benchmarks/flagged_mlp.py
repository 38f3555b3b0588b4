"""The model ``mlp-flag`` of ``warm_start_precompile.py`` (imported by its children only):
the main job's MLP behind a Python flag that its forward reads.  A precompiled frame's
guards check the flag's value, and both values run the same ops, so a process that flips
the flag fails the frame's guards and still hits every compiled graph.  At module level
so that the precompile tier can name the class (a class made inside a function cannot be
found again by name)."""

from __future__ import annotations

import torch
from torch import nn


class Flagged(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.flag = inner, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flag:
            return self.inner(x)
        return self.inner(x)  # the same ops: the same graph, another frame guard
