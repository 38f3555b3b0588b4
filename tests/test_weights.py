"""The frozen-weights hash (artcache/weights.py): what it must tell apart, on both paths.

The device path (used for accelerator tensors) is exercised here on CPU tensors with
``on_device=True``: the same torch operations run on a GPU."""

from __future__ import annotations

import pytest
import torch

from artcache import weights
from artcache.errors import Uncacheable
from artcache.weights import weights_digest


def _weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g), torch.randn(32, generator=g), torch.randn(7, generator=g).bfloat16()]


@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
def test_equal_values_equal_digest_and_any_change_differs(on_device: bool) -> None:
    base = weights_digest(_weights(), on_device=on_device)
    assert weights_digest([t.clone() for t in _weights()], on_device=on_device) == base
    assert weights_digest(_weights(seed=1), on_device=on_device) != base
    for i in range(3):
        changed = _weights()
        flat = changed[i].view(-1)
        flat[-1] = flat[-1] + 1  # the last element: the bf16 tensor's padded word too
        assert weights_digest(changed, on_device=on_device) != base, i
    swapped = _weights()
    swapped[0][[0, 1]] = swapped[0][[1, 0]]
    assert weights_digest(swapped, on_device=on_device) != base
    # One bit of one value.
    flipped = _weights()
    flipped[1].view(torch.int32)[5] ^= 1
    assert weights_digest(flipped, on_device=on_device) != base


@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
def test_layout_and_order_are_part_of_the_digest(on_device: bool) -> None:
    w = _weights()
    base = weights_digest(w, on_device=on_device)
    assert weights_digest(list(reversed(w)), on_device=on_device) != base
    assert weights_digest([w[0].t().contiguous().t(), *w[1:]], on_device=on_device) != base  # other strides
    assert weights_digest([w[0].double(), *w[1:]], on_device=on_device) != base
    assert weights_digest([w[0].reshape(32, 64), *w[1:]], on_device=on_device) != base


def test_device_path_crosses_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "CHUNK_WORDS", 1000)
    big = torch.randn(2500)
    base = weights_digest([big], on_device=True)
    later = big.clone()
    later[2003] += 1  # a word in the third chunk
    assert weights_digest([later], on_device=True) != base
    assert weights_digest([big.clone()], on_device=True) == base


def test_odd_tensors() -> None:
    assert weights_digest([torch.empty(0), torch.tensor(True), torch.zeros(3, dtype=torch.complex64)])
    assert weights_digest([torch.tensor([True, False])]) != weights_digest([torch.tensor([False, True])])
    assert weights_digest([torch.nn.Parameter(torch.ones(3))]) == weights_digest([torch.ones(3)])
    with pytest.raises(Uncacheable):
        weights_digest([torch.eye(3).to_sparse()])
