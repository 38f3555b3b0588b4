"""A fast content hash of a model's weights, computed where they live.

A frozen graph (Inductor's ``freezing``) has its parameters' and buffers' values compiled in,
so its key must name those values: :func:`weights_digest` is the ``frozen_weights`` factor.
It runs on every lookup of a frozen graph, so it must cost little next to a warm start:

* CPU tensors: XXH3-128 over their bytes, read in place (no copy for contiguous tensors).
* Tensors on an accelerator: hashed on their device, never copied to the host.  The bytes
  are read as 32-bit words ``w_i`` and reduced to ``sum_i w_i * m_i mod 2**64`` for two
  independent sequences of odd multipliers ``m_i`` (a function of the word's position, so
  moved words change the sum).  One changed word always changes each sum (``m_i`` is odd and
  the change is below ``2**32``); a change in several words escapes both sums with
  probability about ``2**-128`` for changes unrelated to the multipliers.  Only the two sums
  per tensor cross to the host, in one transfer at the end.

This is an identity check against accidental staleness (another seed, a fine-tuned step),
not against an adversary: entries from untrusted writers are refused by signatures.
Each tensor's dtype, shape, strides, storage offset and device type are hashed with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import xxhash

from .errors import Uncacheable

# Words hashed per device kernel launch: bounds the temporary memory to a few times 8 bytes
# per word (64 MiB per temporary at this size).
CHUNK_WORDS = 1 << 23
_MASK32 = 0xFFFFFFFF
# Per lane, K and C of m_i = (i * K + C) | 1 in wrapping int64 arithmetic: arbitrary odd
# 64-bit constants (the first is 2**64 / golden ratio), written as signed int64 values.
_LANES = ((-0x61C8864680B583EB, 0x2545F4914F6CDD1D), (-0x4AB3A5E5F5D0C1A7, 0x5851F42D4C957F2D))


def _check(t: torch.Tensor) -> None:
    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout is not torch.strided or t.is_quantized:
        raise Uncacheable("frozen-weights", f"cannot hash a {type(t).__name__} with layout {t.layout}")
    if t.device.type == "meta":
        raise Uncacheable("frozen-weights", "a weight on the meta device has no values")


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements in memory order, as a flat uint8 tensor on its device."""
    t = t.detach()
    if t.dtype is torch.bool:
        t = t.to(torch.uint8)
    if not t.is_contiguous():
        t = t.contiguous()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.reshape(-1).view(torch.uint8)


def _device_sums(flat: torch.Tensor) -> torch.Tensor:
    """``[lane0, lane1]`` (int64, on the tensor's device) for a flat uint8 tensor."""
    pad = (-flat.numel()) % 4
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.int32)
    sums = torch.zeros(len(_LANES), dtype=torch.int64, device=flat.device)
    for start in range(0, words.numel(), CHUNK_WORDS):
        chunk = words[start:start + CHUNK_WORDS].to(torch.int64).bitwise_and_(_MASK32)
        position = torch.arange(start, start + chunk.numel(), dtype=torch.int64, device=flat.device)
        for lane, (k, c) in enumerate(_LANES):
            multiplier = position.mul(k).add_(c).bitwise_or_(1)
            sums[lane] += multiplier.mul_(chunk).sum()
    return sums


def weights_digest(tensors: Sequence[torch.Tensor], *, on_device: bool | None = None) -> str:
    """Hex digest of the values and layout of ``tensors``, in order.

    ``on_device``: force the device hash (``True``) or the host hash (``False``) for every
    tensor; by default CPU tensors use the host hash and all others the device hash.
    Raises ``Uncacheable`` for a tensor whose values cannot be read as plain memory.
    """
    h = xxhash.xxh3_128()
    device_sums = []
    with torch.no_grad():
        for t in tensors:
            _check(t)
            meta = (str(t.dtype), tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.device.type)
            h.update(repr(meta).encode())
            if t.numel() == 0:
                continue
            flat = _as_bytes(t)
            use_device = on_device if on_device is not None else t.device.type != "cpu"
            if use_device:
                device_sums.append(_device_sums(flat))
            else:
                h.update(flat.cpu().numpy().data)
    if device_sums:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for sums in device_sums:
            by_device.setdefault(sums.device, []).append(sums)
        for device in sorted(by_device, key=str):
            h.update(torch.stack(by_device[device]).cpu().numpy().tobytes())
    return h.hexdigest()
