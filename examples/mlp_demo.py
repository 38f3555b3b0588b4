"""The main job: compile a 4-block MLP with ``backend="artcache"`` and time the first call.

Run it twice against the same store, each time in a fresh process: the first run
compiles (cold) and saves the entry, the second loads it (warm).  ``scripts/demo.sh``
does exactly that and then runs ``artcache inspect`` on the entry.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()

import torch  # noqa: E402
from torch import nn  # noqa: E402


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def make_mlp(width: int = 256, blocks: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(width) for _ in range(blocks)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="artcache")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    model = make_mlp().eval().to(args.device)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(args.device)
    compiled = torch.compile(model, backend=args.backend)
    start = time.perf_counter()
    with torch.no_grad():
        out = compiled(x)
    if out.is_cuda:
        torch.cuda.synchronize()  # the first result, not its launch
    first_call = time.perf_counter() - start
    with torch.no_grad():
        expected = model(x)
    result = {
        "backend": args.backend,
        "first_call_s": round(first_call, 3),
        "process_s": round(time.perf_counter() - T0, 3),
        "max_abs_err_vs_eager": float((out - expected).abs().max()),
    }
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
