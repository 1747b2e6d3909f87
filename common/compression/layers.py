"""Conv2d / Linear subclasses that train through a :class:`Method` (see ``registry.py``).

They are swapped in place (``module.__class__``, as torch.nn.utils.parametrize does), so the
module keeps its own ``weight`` / ``bias`` Parameters, hooks and state-dict keys; ``plain``
names the class to restore. Without grad (evaluation) or with a frozen weight they run the
plain layer and store nothing.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
from torch import Tensor

from .conv import ConvGeometry


class Method(Protocol):
    """What a wrapped layer trains through (a registry entry's ``build`` makes one per layer):
    the layer's output, with what its backward keeps chosen by the method, and a record of
    what that was at the last forward (``nbytes``, the paper's metric; Tucker ``ranks``)."""

    nbytes: int
    ranks: list[int]

    def conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None,
               g: ConvGeometry) -> Tensor: ...

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor: ...


class CompressedConv2d(nn.Conv2d):
    """nn.Conv2d whose backward keeps what ``method`` stores instead of X."""

    plain = nn.Conv2d
    method: Method

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return self.method.conv2d(x, self.weight, self.bias, self.geometry)
        return super().forward(x)


class CompressedLinear(nn.Linear):
    """nn.Linear whose backward keeps what ``method`` stores instead of X."""

    plain = nn.Linear
    method: Method

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return self.method.linear(x, self.weight, self.bias)
        return super().forward(x)
