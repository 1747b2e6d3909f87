"""Conv2d / Linear subclasses that train through a method of ``methods.py``.

They are swapped in place (``module.__class__``, as torch.nn.utils.parametrize does), so the
module keeps its own ``weight`` / ``bias`` Parameters, hooks and state-dict keys; ``plain``
names the class to restore. Without grad (evaluation) or with a frozen weight they run the
plain layer and store nothing.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .conv import ConvGeometry
from .methods import GradFilter, TuckerMethod, Vanilla

Method = Vanilla | GradFilter | TuckerMethod


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
