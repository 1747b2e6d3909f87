"""Cheap-to-backpropagate versions of the layers between the compressed convolutions.

- ReLU / ReLU6: Y = clamp(X, 0, u) and dX = dY * 1[0 < X < u]; the indicator is kept as a
  1-bit mask (8 per uint8 byte) instead of torch's float copy of Y.
- Frozen BatchNorm in eval mode: Y = X * scale + shift with scale = gamma / sqrt(var + eps),
  shift = beta - mean * scale, so dX = dY * scale: only the C-sized scale is kept.

The classes subclass the torch layers and are swapped in place (``module.__class__``), so
parameters, buffers and state-dict keys stay the same objects and names.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean CPU tensor as ceil(numel / 8) uint8 bytes (element i is bit i % 8 of byte
    i // 8): numpy's packbits, one pass (measured 15x faster than a torch multiply-and-sum
    over 8-element rows on 64x960x7x7)."""
    flat = mask.reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of ``pack_bits``: the boolean tensor of ``shape``."""
    bits = np.unpackbits(packed.numpy(), count=shape.numel(), bitorder="little")
    return torch.from_numpy(bits).view(torch.bool).reshape(shape)


def open_interval_mask(x: Tensor, upper: float | None) -> Tensor:
    """1[0 < X < upper] (upper None: 1[X > 0]) as a boolean CPU tensor, from numpy's
    comparisons: measured 2.9x faster than torch's on 64x1280x7x7 (0.91 against 2.63 ms
    for the pair and the AND), whose comparison kernels write bool at a quarter of the
    speed of a float op."""
    a = x.numpy()
    mask = a > 0
    if upper is not None:
        mask &= a < upper
    return torch.from_numpy(mask)


class MaskedClamp(torch.autograd.Function):
    """Y = clamp(X, 0, upper); saves the 1-bit mask 1[0 < X < upper] (upper None: ReLU)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, upper: float | None) -> Tensor:
        ctx.shape = x.shape
        ctx.save_for_backward(pack_bits(open_interval_mask(x.detach(), upper)))
        return F.relu(x) if upper is None else F.hardtanh(x, 0.0, upper)  # = clamp, 4x faster

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor):
        (packed,) = ctx.saved_tensors
        # dY * mask with the mask as 0/1 bytes: torch multiplies a float by uint8 without
        # the float copy of the mask it makes for bool (64x1280x7x7: 1.24 against 2.16 ms)
        return dy * unpack_bits(packed, ctx.shape).view(torch.uint8), None


class LeanReLU(nn.ReLU):
    """nn.ReLU whose backward keeps 1 bit per element."""

    plain = nn.ReLU

    def forward(self, x: Tensor) -> Tensor:
        return MaskedClamp.apply(x, None) if x.requires_grad else super().forward(x)


class LeanReLU6(nn.ReLU6):
    """nn.ReLU6 whose backward keeps 1 bit per element."""

    plain = nn.ReLU6

    def forward(self, x: Tensor) -> Tensor:
        return MaskedClamp.apply(x, 6.0) if x.requires_grad else super().forward(x)


class EvalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d pinned to eval mode: ``train()`` cannot switch it back (Setup B)."""

    plain = nn.BatchNorm2d

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


class FrozenBatchNorm2d(EvalBatchNorm2d):
    """Eval-mode BatchNorm as Y = X * scale + shift with frozen statistics and affine terms.

    With scale and shift not requiring grad, autograd keeps only ``scale`` (C values) for
    dX = dY * scale, never X.
    """

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            scale = torch.rsqrt(self.running_var + self.eps)
            shift = -self.running_mean * scale
            if self.affine:
                shift = self.bias + shift * self.weight
                scale = scale * self.weight
        return torch.addcmul(shift[:, None, None], x, scale[:, None, None])


LEAN = {nn.ReLU: LeanReLU, nn.ReLU6: LeanReLU6, nn.BatchNorm2d: FrozenBatchNorm2d}
