"""Tucker decompositions of an activation X through the small Gram matrix of each unfolding.

Notation (Kolda & Bader): A_(n) is the mode-n unfolding of X (I_n x J_n, J_n = |X| / I_n),
``X x_n M`` the mode-n product. A Tucker tensor [[S; U_0, ..., U_{N-1}]] stands for
X ~ S x_0 U_0 x_1 U_1 ... with orthonormal U_n (I_n x K_n). A factor ``None`` is the identity
(K_n = I_n): it is neither stored nor multiplied.

Left singular vectors and spectrum come from the eigendecomposition of the smaller Gram side:
  I_n <= J_n:  A A^T = U diag(s^2) U^T                     -> U directly;
  I_n >  J_n:  A^T A = V diag(s^2) V^T,  U_k = orth(A V_k)  (= A V_k / s_k, via QR for safety).
Same subspace and the same singular values as a thin SVD of A_(n), at the price of one
matrix product and a small symmetric eigenproblem; the right factor is never built.

TensorLy (PyTorch backend) does the unfoldings and mode products: its mode_dot (one unfold,
one GEMM, one fold) measured as fast as torch.tensordot / einsum on our shapes, often faster.
Plain torch where it was faster: the last-mode unfolding as a copy-free view, the Gram
matrices' lower triangles (``gram_lower``), ASI's power step (see ``subspace_iteration``),
the products of a thin channel factor on the copy-free (P, I_n, Q) view (``as_slices``), and
the products of small spatial maps as one GEMM with the Kronecker product of their factors
(``trailing_product``).
The eigenproblems and QRs run on one intra-op thread (``one_thread``), the GEMMs on the
caller's threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from math import prod

import tensorly as tl
import torch
from tensorly.tenalg import mode_dot
from torch import Tensor

from .rank import eps_rank, explained_ratios

# Process-wide TensorLy setting; edgefed uses TensorLy with torch tensors only.
tl.set_backend("pytorch")

Factors = tuple[Tensor | None, ...]
RankChoice = Callable[[Sequence[int], Sequence[Sequence[float] | None]], Sequence[int]]


@dataclass(frozen=True)
class Tucker:
    """X ~ core x_0 U_0 x_1 U_1 ...; ``factors[n] is None`` means U_n = I (mode kept whole)."""

    core: Tensor
    factors: Factors

    @property
    def ranks(self) -> list[int]:
        return list(self.core.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: the core plus every non-identity factor."""
        kept = [self.core, *(u for u in self.factors if u is not None)]
        return sum(t.numel() * t.element_size() for t in kept)

    def to_tensor(self) -> Tensor:
        """The full tensor core x_0 U_0 x_1 U_1 ... (for checks; the backward never needs it)."""
        modes = [n for n, u in enumerate(self.factors) if u is not None]
        if not modes:
            return self.core
        return tl.tucker_to_tensor((self.core, [self.factors[n] for n in modes]), modes=modes)


@dataclass(frozen=True)
class ModeSpectrum:
    """Eigen-pairs of the small Gram matrix of A_(n), sorted by decreasing eigenvalue s^2."""

    energies: Tensor
    vectors: Tensor
    tall: bool  # True: the Gram matrix was A^T A (vectors are right singular vectors)


def unfolding(x: Tensor, n: int) -> Tensor:
    """A_(n) = tl.unfold(x, n); for the last mode the transposed view X.reshape(-1, I_n)^T
    (same matrix, no copy; the first mode is a view already)."""
    return x.reshape(-1, x.shape[n]).T if n == x.ndim - 1 else tl.unfold(x, n)


BATCHED_MAX_LEAD = 256  # at most this many leading slices for the batched mode products


def as_slices(x: Tensor, n: int, k: int) -> Tensor | None:
    """X as the copy-free view (P, I_n, Q), P = I_0...I_{n-1}, Q = I_{n+1}...I_{N-1}, when a
    batched product with a rank-k factor suits it: a middle mode, P <= 256 slices (the
    channel mode of a 4-D activation) and 2 k <= Q (the K x Q slices of the result, or
    ``thin_power``'s P partial K x I_n products, are at most half of |X|); else None.
    A_(n) is then [X_1 ... X_P], the slices side by side (columns permuted, which none of
    the products below depends on). Measured on 64x960x7x7 and 64x576x14x14: 1.2-1.4x
    faster at k = 8; the batched products lost at k = 97..324 with Q = 49 (up to 1.5x slower
    for ``thin_power``, whose partial products reached 80 MB)."""
    lead = x.shape[:n].numel()
    trail = x.shape[n + 1:].numel()
    if 0 < n < x.ndim - 1 and lead <= BATCHED_MAX_LEAD and 2 * k <= trail:
        return x.reshape(lead, x.shape[n], trail)
    return None


def mode_product(x: Tensor, m: Tensor, n: int) -> Tensor:
    """X x_n M (M is K x I_n): the batched product M X_p of every slice of ``as_slices``,
    which reads X in place instead of copying its unfolding and folding the result back;
    tl's mode_dot where ``as_slices`` declines."""
    slices = as_slices(x, n, m.shape[0])
    if slices is None:
        return mode_dot(x, m, n)
    return torch.matmul(m, slices).reshape(*x.shape[:n], m.shape[0], *x.shape[n + 1:])


def thin_power(x: Tensor, u: Tensor, n: int) -> Tensor:
    """(A_(n) A_(n)^T U)^T = (U^T A_(n)) A_(n)^T (K x I_n), as two thin products whose output
    rows are the K columns of U: 4 K |X| flops. On ``as_slices``' view it is the sum over
    slices sum_p (U^T X_p) X_p^T, with no unfolding copy; otherwise the unfolding is used."""
    slices = as_slices(x, n, u.shape[1])
    if slices is None:
        a = unfolding(x, n)
        return (u.T @ a) @ a.T
    return torch.matmul(torch.matmul(u.T, slices), slices.transpose(1, 2)).sum(0)


GRAM_BLOCK_ROWS = 64  # at least this many rows per block of ``gram_lower``
GRAM_MAX_BLOCKS = 4
GRAM_BLOCKED_MIN = 1 << 27  # I^2 J from which the blocks pay (2^28 flops, about 2 ms)


def gram_lower(a: Tensor) -> Tensor:
    """G = A A^T (I x I, A I x J), computed only on and below the diagonal: what
    ``torch.linalg.eigh`` reads (UPLO='L').

    A's rows are split into b blocks A_1..A_b (b = min(4, I // 64), at least 1); block row i
    of G is one GEMM  G[i, :i] = A_i [A_1; ...; A_i]^T, so (b + 1) / 2b of the full product's
    2 I^2 J flops (62.5% at b = 4), a symmetric rank-k update (BLAS syrk) out of plain GEMMs.
    Entries above the diagonal blocks are zero, not G's (below the size where blocks pay, the
    whole G): the result is for eigh only.
    Measured on one thread: 960 x 3136 55 -> 36 ms, 576 x 12544 80 -> 53 ms. Below
    I^2 J = 2^27 the extra GEMM calls cost more than the flops they save (two threads:
    256 x 480 0.50 ms whole against 0.88 ms in blocks, 256 x 1920 1.55 against 1.67 ms;
    384 x 1000 1.62 against 1.52 ms), so the whole product is formed there.
    """
    rows = a.shape[0]
    if rows * rows * a.shape[1] < GRAM_BLOCKED_MIN:
        return a @ a.T
    blocks = max(1, min(GRAM_MAX_BLOCKS, rows // GRAM_BLOCK_ROWS))
    gram = a.new_zeros(rows, rows)
    edges = [round(i * rows / blocks) for i in range(blocks + 1)]
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        torch.mm(a[low:high], a[:high].T, out=gram[low:high, :high])
    return gram


SLICE_GRAM_MIN_SIDE = 14  # slices at least this many rows and columns for ``mode_gram``
SLICE_GRAM_CHUNK = 1 << 20  # elements of the partial Gram matrices summed at once


def mode_gram(x: Tensor, n: int) -> Tensor:
    """G = A_(n) A_(n)^T (I_n x I_n), exact on and below the diagonal (what eigh reads; the
    entries above are G's or zero, see ``gram_lower``).

    For a middle mode whose slices X_p of the copy-free view (P, I_n, Q) are at least
    14 x 14 and with I_n < 128 (where ``gram_lower`` forms the whole product too):
    G = sum_p X_p X_p^T as batched products over chunks of slices (their partial Gram
    matrices at most 2^20 elements), without an unfolding copy (measured on 64x576x14x14,
    mode 2: 8.4 ms against 15 ms for the copy and ``gram_lower``; on 64x960x7x7 the tiny
    7 x 7 products lost, 9 against 3.6 ms; for the 576 channels the whole product lost to
    ``gram_lower``'s lower blocks, 99 against 73 ms). Otherwise ``gram_lower`` of the
    unfolding.
    """
    size, trail = x.shape[n], x.shape[n + 1:].numel()
    small = min(size, trail) >= SLICE_GRAM_MIN_SIDE and size < 2 * GRAM_BLOCK_ROWS
    if not (0 < n < x.ndim - 1 and small):
        return gram_lower(unfolding(x, n))
    gram = x.new_zeros(size, size)
    for chunk in x.reshape(-1, size, trail).split(max(1, SLICE_GRAM_CHUNK // size**2)):
        gram += torch.matmul(chunk, chunk.transpose(1, 2)).sum(0)
    return gram


def mode_spectrum(x: Tensor, n: int) -> ModeSpectrum:
    """Spectrum of A_(n) from the eigendecomposition of its smaller Gram side (only the lower
    triangle of the Gram matrix is formed where that pays, see ``mode_gram``; the
    eigenproblem runs on one thread, see ``one_thread``)."""
    tall = x.shape[n] ** 2 > x.numel()  # I_n > J_n
    gram = gram_lower(unfolding(x, n).T) if tall else mode_gram(x, n)
    with one_thread():
        energies, vectors = torch.linalg.eigh(gram)  # ascending
    return ModeSpectrum(energies.flip(0).clamp_min(0.0), vectors.flip(1), tall)


def orthonormal_basis(a: Tensor) -> Tensor:
    """Q of the thin QR of ``a`` (its column space, orthonormal), on one thread."""
    with one_thread():
        return torch.linalg.qr(a).Q


def leading_vectors(x: Tensor, n: int, spectrum: ModeSpectrum, k: int) -> Tensor:
    """U_n: the k leading left singular vectors of A_(n) (I_n x k, orthonormal)."""
    if not spectrum.tall:
        return spectrum.vectors[:, :k].clone(memory_format=torch.contiguous_format)  # own storage
    return orthonormal_basis(unfolding(x, n) @ spectrum.vectors[:, :k])


KRON_MAX_SIZE = 256  # trailing maps of at most this many elements (16 x 16) take one GEMM


def trailing_product(x: Tensor, matrices: Sequence[Tensor | None]) -> Tensor:
    """X x_2 M_2 x_3 M_3 ... over the modes from 2 on (M_n is K_n x I_n; None is I): the
    spatial modes of a conv activation, projected (M = U^T) or expanded (M = U).

    Small maps (every M_n given, at least two, prod I_n and prod K_n <= 256): one GEMM on
    the copy-free view X_(01) (I_0 I_1 x I_2 I_3 ...), since
        X x_2 M_2 x_3 M_3 ... = fold(X_(01) (M_2 (x) M_3 (x) ...)^T)   ((x): Kronecker),
    prod I_n prod K_n flops per row instead of the separate products' sum, but without
    their unfolding copies: measured at 7x7 (K 5) 1.6 against 2.2-8.7 ms, at 14x14 (K 9)
    11.2 against 16.2-21.8 ms; at 28x28 (K 14) it lost, 13.8 against 6.5 ms. Otherwise one
    mode at a time from the last (the last mode's product is one GEMM on a view).
    """
    sizes = x.shape[2:].numel()
    ranks = [m.shape[0] for m in matrices if m is not None]
    if len(ranks) == len(matrices) >= 2 and max(sizes, prod(ranks)) <= KRON_MAX_SIZE:
        rows = x.shape[:2]
        # contiguous: torch.kron refuses some transposed views (U^T of a rank-1 factor)
        kron = reduce(torch.kron, [m.contiguous() for m in matrices])
        return (x.reshape(rows.numel(), sizes) @ kron.T).reshape(*rows, *ranks)
    for n in reversed(range(2, x.ndim)):
        if matrices[n - 2] is not None:
            x = mode_product(x, matrices[n - 2], n)
    return x


def project(x: Tensor, factors: Factors) -> Tensor:
    """Core S = X x_n U_n^T over the non-identity factors, in the order that measured fastest.

    A thin channel factor (mode 1 of a conv activation, where ``as_slices`` takes it) goes
    first: its batched product reads X in place and shrinks it the most; then the batch
    mode (one GEMM on a view), then the trailing (spatial) modes (``trailing_product``).
    A wide channel factor goes last, on what the trailing and batch modes left of X.
    Measured on the shape suite's 19 layer inputs at batch 64, each with its HOSVD eps-0.8
    and its rank-8 factors: 157 ms in all with the batch mode first and the others by
    shrinking ratio, 116 ms in this order (the best order of each, in another run: 104
    against this order's 108 ms).
    """
    thin_channels = factors[1] is not None and as_slices(x, 1, factors[1].shape[1]) is not None

    def batch_mode(y: Tensor) -> Tensor:
        return y if factors[0] is None else mode_product(y, factors[0].T, 0)

    def channel_mode(y: Tensor) -> Tensor:
        return y if factors[1] is None else mode_product(y, factors[1].T, 1)

    def trailing_modes(y: Tensor) -> Tensor:
        return trailing_product(y, [None if u is None else u.T for u in factors[2:]])

    steps = ((channel_mode, batch_mode, trailing_modes) if thin_channels
             else (trailing_modes, batch_mode, channel_mode))
    for step in steps:
        x = step(x)
    return x


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the torch ops inside on one intra-op thread; the previous count is restored.

    Used for the LAPACK calls of a decomposition (symmetric eigenproblems, thin QRs), where
    OpenMP fork/join and the reductions' many barriers cost more than a second thread gives
    back (measured with 2 threads on 2 shared cores: ``eigh`` of a 256 x 256 Gram 2x faster
    on one thread, of a 960 x 960 one 1.2x). The GEMMs (Gram matrices, power steps,
    projections) run on the caller's threads, as the convolutions they stand beside do.
    ``torch.set_num_threads`` is process-wide: torch ops of other Python threads meanwhile
    run on one thread too (slower, never different).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def hosvd(x: Tensor, choose_ranks: RankChoice, modes: Sequence[int]) -> Tucker:
    """Truncated HOSVD: U_n = leading K_n left singular vectors of the ORIGINAL A_(n).

    Only ``modes`` are analysed; the others keep their full size. ``choose_ranks(shape,
    ratios)`` maps the per-mode explained-variance curves (None for modes not analysed) to
    ranks K_n. A rank equal to I_n stores no factor. For a matrix (2 modes) both unfoldings
    share one small Gram matrix, so it is decomposed once.
    """
    spectra = {n: mode_spectrum(x, n) for n in modes[:1]}
    for n in modes[1:]:
        if x.ndim == 2:  # A_(1) = A_(0)^T: the same small Gram, the other side
            first = spectra[modes[0]]
            spectra[n] = ModeSpectrum(first.energies, first.vectors, not first.tall)
        else:
            spectra[n] = mode_spectrum(x, n)
    ratios = [
        explained_ratios(spectra[n].energies) if n in spectra else None for n in range(x.ndim)
    ]
    ranks = choose_ranks(x.shape, ratios)
    factors = tuple(
        leading_vectors(x, n, spectra[n], k) if k < size else None
        for n, (size, k) in enumerate(zip(x.shape, ranks, strict=True))
    )
    return Tucker(project(x, factors), factors)


def subspace_iteration(x: Tensor, previous: Factors, ranks: Sequence[int]) -> Tucker:
    """One warm-started subspace (power) iteration per mode (ASI), then the core.

    U_n <- orth(A_(n) (A_(n)^T U_n^prev)) by QR. The product is evaluated in the cheaper of
    two orders (same matrix, up to rounding):
      thin:  ((U^T A) A^T)^T, two thin products whose output rows are the K_n columns
             (measured 10-17x faster on CPU than A (A^T U), whose GEMMs have a tall
             transposed operand): 4 K_n |X| flops, see ``thin_power``;
      Gram:  (A A^T) U with A A^T from ``mode_gram`` (about 1.25 I_n |X| flops at 4 blocks)
             completed to the symmetric matrix, plus 2 I_n^2 K_n: used when the rank is a
             large part of the mode, K_n > 3 I_n / 8 (measured on one thread, 64x576x14x14:
             K = 238 thin 73 ms, Gram 57 ms; equal at K = 180; 64x960x7x7, K = 324: thin
             40 ms, Gram 48 ms).
    A mode whose previous factor does not fit (first step, new batch size) starts from its
    Gram eigenvectors instead.
    """
    factors = []
    for n, (size, k) in enumerate(zip(x.shape, ranks, strict=True)):
        u = previous[n] if n < len(previous) else None
        if k >= size:
            factors.append(None)
        elif u is None or u.shape != (size, k):
            factors.append(leading_vectors(x, n, mode_spectrum(x, n), k))
        elif 8 * k > 3 * size:
            lower = mode_gram(x, n)
            factors.append(orthonormal_basis((lower.tril() + lower.tril(-1).T) @ u))
        else:
            factors.append(orthonormal_basis(thin_power(x, u, n).T))
    factors = tuple(factors)
    return Tucker(project(x, factors), factors)


def reference_hosvd(x: Tensor, eps: float) -> Tucker:
    """The original code's HOSVD_eps: a full thin SVD of every unfolding (both singular
    factors built), each truncated by the eps rule, every factor stored. The benchmark and
    test reference only."""
    factors = []
    for n in range(x.ndim):
        u, s, _ = torch.linalg.svd(tl.unfold(x, n), full_matrices=False)
        factors.append(u[:, : eps_rank(explained_ratios(s**2), eps)])
    return Tucker(tl.tenalg.multi_mode_dot(x, factors, transpose=True), tuple(factors))
