"""The built-in training methods of a wrapped layer (see ``registry.py``); each records what
it stored at its last forward (``nbytes``, the paper's metric) and, for the Tucker ones, the
ranks used."""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil

import torch.nn.functional as F
from torch import Tensor

from .conv import ConvGeometry, GradFilterConv2d, TuckerConv2d
from .decompose import RankChoice, Tucker, hosvd, subspace_iteration
from .linear import GradFilterLinear, TuckerLinear
from .rank import (
    BudgetLedger,
    budget_ranks,
    clip_ranks,
    eps_ranks,
    rank_limits,
    widen_free_modes,
)


class Vanilla:
    """Plain torch ops: autograd keeps X itself."""

    def __init__(self) -> None:
        self.ranks: list[int] = []
        self.nbytes = 0

    def _record(self, x: Tensor) -> None:
        self.nbytes = x.numel() * x.element_size()

    def conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
        self._record(x)
        return g.output(x, weight, bias)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        self._record(x)
        return F.linear(x, weight, bias)


class GradFilter(Vanilla):
    """Gradient Filtering with patch radius R: keeps X averaged over R x R patches."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.radius = radius

    def conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
        y = GradFilterConv2d.apply(x, weight, bias, g, self.radius)
        grid = ceil(y.shape[2] / self.radius) * ceil(y.shape[3] / self.radius)
        self.nbytes = x.shape[0] * x.shape[1] * grid * x.element_size()
        return y

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if x.ndim == 3:
            self.nbytes = x.shape[0] * ceil(x.shape[1] / self.radius) * x.shape[2]
            self.nbytes *= x.element_size()
        else:
            self._record(x)
        return GradFilterLinear.apply(x, weight, bias, self.radius)


class TuckerMethod:
    """Keeps X as a Tucker tensor [[S; U_n]] (SVD, HOSVD and ASI).

    Ranks per step: ``rank`` (fixed, clipped), ``budget`` (largest explained variance up to
    ``eps`` whose bytes fit this layer's share of the ledger) or the ``eps`` rule.
    ``batch_only`` analyses the batch mode only (the SVD variant: X_(0) ~ U_k (U_k^T X_(0))).
    ``warm_start`` (ASI): ranks are fixed at the first batch, later batches run one subspace
    iteration from the previous factors instead of a decomposition.
    """

    def __init__(
        self,
        *,
        layer: str,
        eps: float = 1.0,
        rank: int | Sequence[int] | None = None,
        budget: tuple[BudgetLedger, int] | None = None,
        batch_only: bool = False,
        warm_start: bool = False,
    ) -> None:
        self.layer, self.eps, self.rank, self.budget = layer, eps, rank, budget
        self.batch_only, self.warm_start = batch_only, warm_start
        self.ranks: list[int] = []
        self.nbytes = 0
        self.fixed_ranks: list[int] | None = None  # ASI: the ranks chosen at the first batch
        self.factors: tuple[Tensor | None, ...] = ()  # ASI: the previous step's factors

    def _analysed(self, shape: Sequence[int]) -> list[int]:
        """Modes whose spectrum the rank rule needs (the others keep their full size)."""
        modes = [0] if self.batch_only else range(len(shape))
        if self.rank is not None:
            fixed = clip_ranks(shape, self.rank, self.layer)
            return [n for n in modes if fixed[n] < shape[n]]
        if self.budget is None and self.eps >= 1.0:
            return []
        return [n for n in modes if shape[n] > 1]

    def _rank_choice(self, x: Tensor) -> RankChoice:
        """A user ``rank`` as given (clipped); budget and eps ranks with free modes widened."""
        if self.rank is not None:
            return lambda shape, _: clip_ranks(shape, self.rank, self.layer)
        if self.budget is not None:
            ledger, index = self.budget
            elements = max(ledger.share(index), 0) // x.element_size()
            return lambda shape, ratios: widen_free_modes(
                shape, budget_ranks(shape, ratios, elements, self.eps))
        return lambda shape, ratios: widen_free_modes(shape, eps_ranks(shape, ratios, self.eps))

    def compress(self, x: Tensor) -> Tucker:
        if self.fixed_ranks is None:
            t = hosvd(x, self._rank_choice(x), self._analysed(x.shape))
            if self.warm_start:
                self.fixed_ranks = t.ranks
        else:
            limits = rank_limits(x.shape)
            ranks = [min(k, limit) for k, limit in zip(self.fixed_ranks, limits, strict=True)]
            t = subspace_iteration(x, self.factors, ranks)
        if self.warm_start:
            self.factors = t.factors
        self.ranks, self.nbytes = t.ranks, t.nbytes
        if self.budget is not None:
            self.budget[0].record(self.budget[1], t.nbytes)
        return t

    def conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
        return TuckerConv2d.apply(x, weight, bias, g, self.compress)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return TuckerLinear.apply(x, weight, bias, self.compress)
