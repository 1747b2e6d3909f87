"""Linear autograd Functions that keep a compressed input for the weight gradient.

For X of shape (B, C) or (B, L, C) (any leading modes), Y = X W^T + b and
    dW[o,c] = sum_{lead} dY[lead, o] X[lead, c],    dX = dY W  (exact, needs W and dY only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensorly.tenalg import multi_mode_dot
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .conv import Compress, save_tucker, saved_tucker
from .decompose import Tucker


def tucker_linear_weight_grad(x: Tucker, dy: Tensor) -> Tensor:
    """dW from X ~ [[S; U_0, ..., U_{N-1}]] (channel mode last) without rebuilding X:

        Z  = dY x_0 U_0^T ... x_{N-2} U_{N-2}^T     (K_0 x ... x K_{N-2} x O)
        G  = <Z, S> over the leading modes           (O x K_{N-1})
        dW = G U_{N-1}^T                              (O x C)
    """
    *lead, channel = x.factors
    modes = [n for n, u in enumerate(lead) if u is not None]
    z = multi_mode_dot(dy, [lead[n] for n in modes], modes=modes, transpose=True) if modes else dy
    axes = list(range(dy.ndim - 1))
    g = torch.tensordot(z, x.core, dims=(axes, axes))
    return g if channel is None else g @ channel.T


def _lead_sum(dy: Tensor) -> Tensor:
    return dy.reshape(-1, dy.shape[-1]).sum(0)


def token_patches(x: Tensor, radius: int, sums: bool = False) -> Tensor:
    """(B, L, C) -> (B, C, ceil(L/R)): means (or sums) over patches of R consecutive tokens;
    a partial last patch averages its real tokens."""
    pooled = F.avg_pool2d(x.transpose(1, 2).unsqueeze(-1), (radius, 1), (radius, 1),
                          ceil_mode=True, divisor_override=1 if sums else None)
    return pooled.squeeze(-1)


class TuckerLinear(torch.autograd.Function):
    """Linear layer that saves a Tucker tensor of X (HOSVD, SVD or ASI) instead of X.

    forward: Y = X W^T + b (exact); saves [[S; U_n]] = compress(X), and W only when dX is
    needed. backward: dX = dY W, dW by ``tucker_linear_weight_grad``, db = sum dY.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                compress: Compress) -> Tensor:
        save_tucker(ctx, weight, compress(x))
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor):
        weight, x = saved_tucker(ctx)
        dx = dy @ weight if ctx.needs_input_grad[0] else None
        dw = tucker_linear_weight_grad(x, dy) if ctx.needs_input_grad[1] else None
        db = _lead_sum(dy) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


class GradFilterLinear(torch.autograd.Function):
    """Gradient Filtering for token inputs (B, L, C): dY constant on patches of R tokens,
    X replaced by its patch mean:  dW ~ sum_{b,p} (sum_{l in p} dY[b,l]) mean_{l in p} X[b,l].
    Saved: the patch means (|X| / R). A 2-D input (B, C) has no token axis to filter: X is
    kept whole and dW is exact. dX is exact.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                radius: int) -> Tensor:
        kept = x.detach()
        if x.ndim == 3:
            kept = token_patches(kept, radius)
        ctx.radius = radius
        ctx.save_for_backward(weight if ctx.needs_input_grad[0] else None, kept)
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor):
        weight, kept = ctx.saved_tensors
        dx = dy @ weight if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            if dy.ndim == 3:
                dw = torch.einsum("bop,bcp->oc", token_patches(dy, ctx.radius, sums=True), kept)
            else:
                dw = dy.T @ kept
        db = _lead_sum(dy) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None
