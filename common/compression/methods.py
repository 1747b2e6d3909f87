"""The built-in training methods of a wrapped layer (see ``registry.py``); each records what
it stored at its last forward (``nbytes``, the paper's metric) and, for the Tucker ones, the
ranks used."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from math import ceil

import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

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


class SharedInputs:
    """Tucker tensors of layer inputs, kept as long as the input tensor lives (weakly keyed by
    the tensor object, dropped when it is modified in place), so that layers reading the same
    tensor with the same settings decompose it once: a ResNet block's conv1 and its downsample
    shortcut, for instance. The second layer gets the first one's result, which is what its own
    decomposition of the same data would compute, and autograd keeps it once."""

    def __init__(self) -> None:
        self._by_input: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def _current(self, x: Tensor) -> dict[Hashable, Tucker]:
        version, tuckers = self._by_input.get(x, (None, {}))
        return tuckers if version == x._version else {}

    def lookup(self, x: Tensor, settings: Hashable) -> Tucker | None:
        return self._current(x).get(settings)

    def store(self, x: Tensor, settings: Hashable, tucker: Tucker) -> None:
        self._by_input[x] = (x._version, {**self._current(x), settings: tucker})


SHARED_INPUTS = SharedInputs()


class TuckerMethod:
    """Keeps X as a Tucker tensor [[S; U_n]] (SVD, HOSVD and ASI).

    Ranks per step: ``rank`` (fixed, clipped), ``budget`` (largest explained variance up to
    ``eps`` whose bytes fit this layer's share of the ledger) or the ``eps`` rule.
    ``batch_only`` analyses the batch mode only (the SVD variant: X_(0) ~ U_k (U_k^T X_(0))).
    ``warm_start`` (ASI): ranks are fixed at the first batch, later batches run one subspace
    iteration from the previous factors instead of a decomposition.
    Layers whose input is the same tensor and whose ``_settings`` are equal share one result
    (``SHARED_INPUTS``).
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

    def _settings(self) -> Hashable | None:
        """All that decides ``compress``'s result besides X: the rank rule and, for ASI, the
        fixed ranks and the previous factors (by identity: layers that shared the last step
        hold the same ones). None, never shared, under a budget: each layer has its own share."""
        if self.budget is not None:
            return None
        rank = tuple(self.rank) if isinstance(self.rank, Sequence) else self.rank
        fixed = None if self.fixed_ranks is None else tuple(self.fixed_ranks)
        return (self.eps, rank, self.batch_only, self.warm_start, fixed,
                tuple(map(id, self.factors)))

    def _decompose(self, x: Tensor) -> Tucker:
        if self.fixed_ranks is None:
            return hosvd(x, self._rank_choice(x), self._analysed(x.shape))
        limits = rank_limits(x.shape)
        ranks = [min(k, limit) for k, limit in zip(self.fixed_ranks, limits, strict=True)]
        return subspace_iteration(x, self.factors, ranks)

    def compress(self, x: Tensor) -> Tucker:
        """[[S; U_n]] of the layer input ``x`` (shared with the layers that read the same
        tensor with the same settings, see ``SharedInputs``)."""
        settings = self._settings()
        t = None if settings is None else SHARED_INPUTS.lookup(x, settings)
        if t is None:
            t = self._decompose(x.detach())
            if settings is not None:
                SHARED_INPUTS.store(x, settings, t)
        if self.warm_start and self.fixed_ranks is None:
            self.fixed_ranks = t.ranks
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
