"""Rank rules: how many singular directions of each mode-n unfolding to keep.

A mode's *spectrum* is the descending list of squared singular values s_1^2 >= s_2^2 >= ...
of its unfolding A_(n) (the eigenvalues of the Gram matrix A_(n) A_(n)^T). ``None`` stands
for a mode that is not decomposed: it keeps its full size I_n and stores no factor.

Stored elements of a Tucker tensor with ranks K_n (a mode with K_n = I_n needs no factor,
the identity is implied):  prod_n K_n + sum_{n: K_n < I_n} I_n K_n.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from math import prod

from torch import Tensor


def explained_ratios(spectrum: Tensor) -> list[float]:
    """Cumulative explained variance r_k = (s_1^2 + ... + s_k^2) / sum_i s_i^2, k = 1..len."""
    energy = spectrum.double().clamp_min(0.0)
    total = float(energy.sum())
    if total <= 0.0:  # an all-zero activation: one direction explains "everything"
        return [1.0] * energy.numel()
    return (energy.cumsum(0) / total).tolist()


def eps_rank(ratios: Sequence[float], eps: float) -> int:
    """The smallest k with r_k >= eps (the paper's rule); at most len(ratios)."""
    return min(bisect_left(ratios, eps) + 1, len(ratios))


def tucker_elements(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Elements stored by a Tucker tensor: the core plus every non-identity factor."""
    return prod(ranks) + sum(size * k for size, k in zip(shape, ranks, strict=True) if k < size)


def widen_free_modes(shape: Sequence[int], ranks: Sequence[int]) -> tuple[int, ...]:
    """Keep a mode whole (K_n = I_n, no factor) wherever that stores no more elements: a
    factor of a tiny mode (e.g. a 2x2 feature map) can cost more than it saves in the core.
    Never more bytes, never less accurate. Smallest modes first, one pass."""
    ranks = list(ranks)
    for n in sorted(range(len(shape)), key=lambda m: shape[m]):
        wider = [*ranks[:n], shape[n], *ranks[n + 1:]]
        if ranks[n] < shape[n] and tucker_elements(shape, wider) <= tucker_elements(shape, ranks):
            ranks = wider
    return tuple(ranks)


def eps_ranks(
    shape: Sequence[int], ratios: Sequence[Sequence[float] | None], eps: float
) -> tuple[int, ...]:
    """Per-mode eps ranks; undecomposed modes (ratios None) keep their full size."""
    return tuple(
        size if r is None else eps_rank(r, eps) for size, r in zip(shape, ratios, strict=True)
    )


def budget_ranks(
    shape: Sequence[int],
    ratios: Sequence[Sequence[float] | None],
    budget_elements: int,
    eps: float = 1.0,
) -> tuple[int, ...]:
    """Ranks of the largest explained variance eps' <= eps whose Tucker tensor fits the budget.

    Candidates for eps' are the cumulative ratios r_k of every decomposed mode (the only
    levels at which some rank changes), scanned from the top; the first whose
    ``tucker_elements`` <= ``budget_elements`` wins. When even rank 1 in every decomposed
    mode does not fit, those minimal ranks are returned (the stored size then exceeds the
    budget; ``compressed_bytes`` reports it).
    """
    ranks = eps_ranks(shape, ratios, eps)
    if tucker_elements(shape, ranks) <= budget_elements:
        return ranks
    levels = sorted({x for r in ratios if r is not None for x in r if x < eps}, reverse=True)
    for level in levels:
        ranks = eps_ranks(shape, ratios, level)
        if tucker_elements(shape, ranks) <= budget_elements:
            return ranks
    return tuple(size if r is None else 1 for size, r in zip(shape, ratios, strict=True))


def rank_limits(shape: Sequence[int]) -> tuple[int, ...]:
    """The largest useful rank per mode: min(I_n, J_n), the rank bound of A_(n) (I_n x J_n)."""
    total = prod(shape)
    return tuple(min(size, total // size) for size in shape)


def clip_ranks(
    shape: Sequence[int], rank: int | Sequence[int], layer: str = "layer"
) -> tuple[int, ...]:
    """A user rank (one int for every mode, or one per mode) clipped to ``rank_limits``."""
    ranks = (rank,) * len(shape) if isinstance(rank, int) else tuple(rank)
    if len(ranks) != len(shape):
        raise ValueError(
            f"rank={tuple(rank)} gives {len(ranks)} ranks but the input of {layer} has "
            f"{len(shape)} modes {tuple(shape)}; give an int or one rank per mode"
        )
    return tuple(min(k, limit) for k, limit in zip(ranks, rank_limits(shape), strict=True))


class BudgetLedger:
    """A byte budget for all wrapped layers together, handed out in forward order.

    Layer i (0-based, of n) may store  (budget - bytes stored by layers 0..i-1 at this
    step) / (n - i): bytes a small early layer leaves unused go to the later ones.
    """

    def __init__(self, budget_bytes: int, layers: int) -> None:
        self.budget_bytes = budget_bytes
        self.used = [0] * layers

    def share(self, index: int) -> int:
        return (self.budget_bytes - sum(self.used[:index])) // (len(self.used) - index)

    def record(self, index: int, nbytes: int) -> None:
        self.used[index] = nbytes
