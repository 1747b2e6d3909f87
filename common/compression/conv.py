"""Conv2d autograd Functions that keep a compressed input for the weight gradient.

Convolution (stride s, dilation d, zero padding p, per axis; G groups of C/G input channels):
    Y[b,o,h',w'] = sum_{c,i,j} W[o,c,i,j] Xp[b, g(o)C/G + c, s_h h' + d_h i, s_w w' + d_w j]
    dW[o,c,i,j]  = sum_{b,h',w'} dY[b,o,h',w'] Xp[b, g(o)C/G + c, s_h h' + d_h i, s_w w' + d_w j]
    dX           = conv_transpose(dY, W)        -- exact: needs W and dY only.
The forward output is always computed with the real X; only the saved tensors change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensorly.tenalg import mode_dot
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

from .decompose import Tucker, trailing_product


@dataclass(frozen=True)
class ConvGeometry:
    """Everything but the tensors that defines a Conv2d (zero padding, per axis)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def output(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def input_grad(self, x_shape: torch.Size, weight: Tensor, dy: Tensor) -> Tensor:
        return conv2d_input(x_shape, weight, dy, self.stride, self.padding, self.dilation,
                            self.groups)

    def weight_grad(self, x: Tensor, weight_shape: tuple[int, ...], dy: Tensor,
                    groups: int | None = None) -> Tensor:
        """dW of the correlation of ``x`` with ``dy`` (``groups`` overrides self.groups)."""
        return conv2d_weight(x, weight_shape, dy, self.stride, self.padding, self.dilation,
                             self.groups if groups is None else groups)


def tucker_conv_weight_grad(x: Tucker, dy: Tensor, weight_shape: tuple[int, ...],
                            geometry: ConvGeometry) -> Tensor:
    """dW from X ~ [[S; U0, U1, U2, U3]] without rebuilding X.

    1. Z  = dY x_0 U0^T                  (K0 x O x H' x W': project dY on the batch factor)
    2. Xs = S x_2 U2 x_3 U3              (K0 x K1 x H x W: expand the core spatially,
                                          ``trailing_product``)
    3. channel mode, group width C_g = C/G:
       K1 <  C_g: G = correlate(Xs, Z) as an ungrouped conv (O x K1 x kh x kw), then
                  dW[o,c] = sum_k U1[g(o)C_g + c, k] G[o,k]          (1x1 contraction per group)
       else:      expand Xs x_1 U1 (K0 x C x H x W) and correlate with the real groups
                  (always the case for depthwise: C_g = 1).
    Correlations respect stride, dilation and the per-axis padding. ``None`` factors are I.
    """
    u0, u1, u2, u3 = x.factors
    z = dy if u0 is None else mode_dot(dy, u0.T, 0)
    xs = trailing_product(x.core, (u2, u3))
    out_channels, group_width, kh, kw = weight_shape
    groups = geometry.groups
    if u1 is None or u1.shape[1] >= group_width:
        if u1 is not None:
            xs = mode_dot(xs, u1, 1)
        return geometry.weight_grad(xs, weight_shape, z)
    k1 = u1.shape[1]
    g = geometry.weight_grad(xs, (out_channels, k1, kh, kw), z, groups=1)
    g = g.reshape(groups, out_channels // groups, k1, kh * kw)
    dw = torch.einsum("gck,gokx->gocx", u1.reshape(groups, group_width, k1), g)
    return dw.reshape(weight_shape)


Compress = Callable[[Tensor], Tucker]
"""Called with the layer's input tensor itself, not a detached copy, so that layers reading one
tensor can share its decomposition (``methods.SharedInputs``); it must not modify it."""


def save_tucker(ctx: FunctionCtx, weight: Tensor, x: Tucker) -> None:
    """Save [[S; U_n]] of X for dW, and W only when dX (a function of dY and W) is needed."""
    ctx.save_for_backward(weight if ctx.needs_input_grad[0] else None, x.core, *x.factors)


def saved_tucker(ctx: FunctionCtx) -> tuple[Tensor | None, Tucker]:
    """(W or None, [[S; U_n]]) as ``save_tucker`` saved them."""
    weight, core, *factors = ctx.saved_tensors
    return weight, Tucker(core, tuple(factors))


class TuckerConv2d(torch.autograd.Function):
    """Conv2d that saves a Tucker tensor of X (HOSVD, SVD or ASI) instead of X.

    forward: Y = conv(X, W) + b (exact); saves [[S; U_n]] = compress(X), and W only when
    dX is needed. backward: dX exact, dW by ``tucker_conv_weight_grad``, db = sum dY.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                geometry: ConvGeometry, compress: Compress) -> Tensor:
        save_tucker(ctx, weight, compress(x))
        ctx.geometry, ctx.x_shape, ctx.weight_shape = geometry, x.shape, weight.shape
        return geometry.output(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor):
        weight, x = saved_tucker(ctx)
        g = ctx.geometry
        dx = g.input_grad(ctx.x_shape, weight, dy) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            dw = tucker_conv_weight_grad(x, dy, ctx.weight_shape, g)
        db = dy.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def patch_means(x: Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Mean of X over non-overlapping patches from the top-left corner (partial patches at
    the border average their real elements), cropped or zero-filled to ``grid`` patches."""
    means = F.avg_pool2d(x, patch, patch, ceil_mode=True)
    return F.pad(means, (0, grid[1] - means.shape[-1], 0, grid[0] - means.shape[-2]))


class GradFilterConv2d(torch.autograd.Function):
    """Gradient Filtering (Yang et al., CVPR 2023) with radius R.

    dY is taken as constant on R x R output patches p and X as constant (its mean) on the
    matching (R s_h) x (R s_w) input patches, with kernel offsets ignored inside a patch:
        dW[o,c,i,j] ~ sum_{b,p} (sum_{h',w' in p} dY[b,o,h',w']) * mean_{p}(X)[b,c]
    for every (i,j). Saved: the patch means of X (about |X| / (R s)^2). Using the mean of X
    (not the original code's sum over the (R s)^2 input patch) keeps strided convs at the
    right scale. dX is exact.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                geometry: ConvGeometry, radius: int) -> Tensor:
        y = geometry.output(x, weight, bias)
        grid = (-(-y.shape[2] // radius), -(-y.shape[3] // radius))
        patch = (radius * geometry.stride[0], radius * geometry.stride[1])
        ctx.geometry, ctx.radius, ctx.x_shape = geometry, radius, x.shape
        ctx.weight_shape = weight.shape
        ctx.save_for_backward(weight if ctx.needs_input_grad[0] else None,
                              patch_means(x.detach(), patch, grid))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor):
        weight, x_means = ctx.saved_tensors
        g, r = ctx.geometry, ctx.radius
        dx = g.input_grad(ctx.x_shape, weight, dy) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            dy_sums = F.avg_pool2d(dy, r, r, ceil_mode=True, divisor_override=1)
            b, c, ph, pw = x_means.shape
            o = dy.shape[1]
            dw = torch.einsum(
                "bgop,bgcp->goc",
                dy_sums.reshape(b, g.groups, o // g.groups, ph * pw),
                x_means.reshape(b, g.groups, c // g.groups, ph * pw),
            )
            dw = dw.reshape(o, c // g.groups, 1, 1).expand(ctx.weight_shape).contiguous()
        db = dy.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None
