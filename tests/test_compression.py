"""Compressed-activation ops: exactness at full rank, the truncated math, the wrapping
contract, lean layers, gradient filtering, ASI and argument checks."""

from __future__ import annotations

import copy
from itertools import product

import pytest
import tensorly as tl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from common.compression import (
    Tucker,
    compressed_bytes,
    hosvd,
    layer_ranks,
    reference_hosvd,
    subspace_iteration,
    trainable_layers,
    wrap_last_layers,
    wrapped_layers,
)
from common.compression.conv import ConvGeometry, tucker_conv_weight_grad
from common.compression.decompose import (
    as_slices,
    gram_lower,
    mode_gram,
    mode_product,
    one_thread,
    project,
    thin_power,
    trailing_product,
)
from common.compression.lean import pack_bits, unpack_bits
from common.compression.linear import tucker_linear_weight_grad
from common.compression.rank import eps_ranks, widen_free_modes
from common.compression.registry import METHODS

DTYPE = torch.float64
# (in_channels, out_channels, groups): standard, depthwise, depthwise x2 multiplier, grouped
CONV_KINDS = {"standard": (6, 5, 1), "depthwise": (6, 6, 6), "multiplier": (4, 8, 4),
              "grouped": (8, 6, 2)}
# (stride, padding, dilation): every value of each, and the awkward combinations together
GEOMETRIES = [(1, 0, 1), (2, 1, 1), (1, (1, 2), 2), (2, (1, 2), 2), (2, 0, 2), (1, 1, 2)]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread spares OpenMP barriers on busy shared cores."""
    with one_thread():
        yield


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def make_conv(kind: str, stride, padding, dilation) -> nn.Conv2d:
    c, o, groups = CONV_KINDS[kind]
    return nn.Conv2d(c, o, 3, stride, padding, dilation, groups, dtype=DTYPE)


def grads(model: nn.Module, layer: nn.Module, x: torch.Tensor, dy_seed: int = 1):
    """(dX, dW, db) of ``layer`` inside ``model`` for a fixed random output gradient."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed), dtype=y.dtype)
    y.backward(dy)
    return x.grad, layer.weight.grad, layer.bias.grad


def spy_tuckers(layer: nn.Module) -> list[Tucker]:
    """Record the Tucker tensors a wrapped layer's real ``compress`` returns."""
    seen: list[Tucker] = []
    compress = layer.method.compress

    def recording(x: torch.Tensor) -> Tucker:
        seen.append(compress(x))
        return seen[-1]

    layer.method.compress = recording
    return seen



def wrapped_linear(method: str, eps: float) -> tuple[nn.Module, nn.Linear, nn.Linear]:
    """(model, its wrapped 12 -> 5 Linear, an unwrapped copy of that Linear); seed 0 first."""
    torch.manual_seed(0)
    linear = nn.Linear(12, 5, dtype=DTYPE)
    reference = copy.deepcopy(linear)
    return wrap_last_layers(nn.Sequential(linear), method, 1, eps=eps), linear, reference

# ---------------------------------------------------------------- full rank = vanilla

@pytest.mark.parametrize("stride,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("kind", CONV_KINDS)
def test_full_rank_conv_equals_vanilla(kind, stride, padding, dilation):
    torch.manual_seed(0)
    reference = make_conv(kind, stride, padding, dilation)
    x = torch.randn(3, reference.in_channels, 9, 8, dtype=DTYPE)
    for method in ("svd", "hosvd", "asi"):
        conv = copy.deepcopy(reference)
        model = wrap_last_layers(nn.Sequential(conv), method, 1, eps=1.0)
        for step in range(2):  # asi: the second step runs the warm-started path
            got, want = grads(model, conv, x, step), grads(reference, reference, x, step)
            for g, w in zip(got, want, strict=True):
                assert rel(g, w) < 1e-4, method


@pytest.mark.parametrize("method", ["svd", "hosvd", "asi"])
@pytest.mark.parametrize("shape", [(7, 12), (4, 5, 12)])
def test_full_rank_linear_equals_vanilla(shape, method):
    model, linear, reference = wrapped_linear(method, eps=1.0)
    x = torch.randn(shape, dtype=DTYPE)
    for g, w in zip(grads(model, linear, x), grads(reference, reference, x), strict=True):
        assert rel(g, w) < 1e-4


# ---------------------------------------------------------------- truncated math

def random_tucker(shape, ranks, identity=()) -> Tucker:
    """Orthonormal random factors (None where ``identity``) and a random core."""
    factors = tuple(
        None if n in identity else torch.linalg.qr(torch.randn(size, k, dtype=DTYPE)).Q
        for n, (size, k) in enumerate(zip(shape, ranks, strict=True))
    )
    core_shape = [size if u is None else u.shape[1] for size, u in zip(shape, factors, strict=True)]
    return Tucker(torch.randn(core_shape, dtype=DTYPE), factors)


@pytest.mark.parametrize("stride,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("kind", CONV_KINDS)
def test_conv_weight_grad_from_factors(kind, stride, padding, dilation):
    """dW from the factors = dW of the reconstructed X: channel ranks below and above the
    group width (both contraction orders), full-rank square factors, identity factors."""
    torch.manual_seed(0)
    conv = make_conv(kind, stride, padding, dilation)
    g = ConvGeometry(conv.stride, conv.padding, conv.dilation, conv.groups)
    shape = (4, conv.in_channels, 9, 8)
    truncated = [(2, k1, 5, 6) for k1 in (1, conv.in_channels - 1)]
    for ranks, identity in product([*truncated, shape], ((), (0, 2), (1,))):
        t = random_tucker(shape, ranks, identity)
        x = t.to_tensor()
        dy = torch.randn(conv(x).shape, dtype=DTYPE)
        want = conv2d_weight(x, conv.weight.shape, dy, conv.stride, conv.padding,
                             conv.dilation, conv.groups)
        assert rel(tucker_conv_weight_grad(t, dy, conv.weight.shape, g), want) < 1e-10


@pytest.mark.parametrize("shape,ranks", [((7, 12), (3, 4)), ((4, 5, 12), (2, 3, 4))])
def test_linear_weight_grad_from_factors(shape, ranks):
    t = random_tucker(shape, ranks)
    dy = torch.randn(*shape[:-1], 5, dtype=DTYPE)
    want = dy.reshape(-1, 5).T @ t.to_tensor().reshape(-1, shape[-1])
    assert rel(tucker_linear_weight_grad(t, dy), want) < 1e-10


@pytest.mark.parametrize("method,params", [("svd", {"eps": 0.7}), ("hosvd", {"eps": 0.8}),
                                           ("asi", {"eps": 0.8}), ("hosvd", {"rank": 3}),
                                           ("hosvd", {"budget_bytes": 3000})])
@pytest.mark.parametrize("kind", CONV_KINDS)
def test_truncated_conv_equals_reconstruction(kind, method, params):
    """eps < 1: dW = the vanilla dW on the reconstructed truncated activation (same ranks);
    dX stays exact."""
    torch.manual_seed(0)
    conv = make_conv(kind, 2, (1, 2), 1)
    reference = copy.deepcopy(conv)
    model = wrap_last_layers(nn.Sequential(conv), method, 1, **params)
    seen = spy_tuckers(conv)
    for step in range(2):
        x = torch.randn(6, conv.in_channels, 9, 8, dtype=DTYPE) + step
        dx, dw, db = grads(model, conv, x, step)
        assert seen[-1].ranks == layer_ranks(model)[0]
        assert layer_ranks(model)[0] != list(x.shape)  # something was truncated
        rdx, _, rdb = grads(reference, reference, x, step)
        _, rdw, _ = grads(reference, reference, seen[-1].to_tensor(), step)
        assert rel(dx, rdx) < 1e-10 and rel(db, rdb) < 1e-10
        assert rel(dw, rdw) < 1e-4


@pytest.mark.parametrize("method", ["svd", "hosvd", "asi"])
@pytest.mark.parametrize("shape", [(16, 12), (4, 5, 12)])
def test_truncated_linear_equals_reconstruction(shape, method):
    model, linear, reference = wrapped_linear(method, eps=0.7)
    seen = spy_tuckers(linear)
    x = torch.randn(shape, dtype=DTYPE)
    _, dw, _ = grads(model, linear, x)
    assert seen[-1].ranks != list(shape)
    _, want, _ = grads(reference, reference, seen[-1].to_tensor())
    assert rel(dw, want) < 1e-4


def test_free_modes_are_kept_whole():
    """A factor that costs more than it saves is dropped (identity): fewer bytes, exact."""
    assert widen_free_modes((64, 480, 2, 2), (1, 1, 1, 1)) == (1, 1, 2, 2)
    assert widen_free_modes((64, 32, 16, 16), (3, 3, 3, 2)) == (3, 3, 3, 2)


@pytest.mark.parametrize("n,k,batched", [(1, 3, True), (1, 20, False), (2, 2, True), (2, 3, False),
                                         (0, 3, False), (3, 2, False)])
def test_mode_products_on_slices_equal_the_unfolding_math(n, k, batched):
    """X x_n M and (U^T A_(n)) A_(n)^T, on the copy-free slices where ``as_slices`` takes
    them (middle mode, 2k <= Q) and through the unfolding elsewhere, equal the unfolded
    definitions."""
    torch.manual_seed(0)
    x = torch.randn(6, 7, 5, 4, dtype=DTYPE)
    assert (as_slices(x, n, k) is not None) == batched
    m = torch.randn(k, x.shape[n], dtype=DTYPE)
    a = tl.unfold(x, n)
    want = tl.fold(m @ a, n, [*x.shape[:n], k, *x.shape[n + 1:]])
    assert rel(mode_product(x, m, n), want) < 1e-12
    u = torch.randn(x.shape[n], k, dtype=DTYPE)
    assert rel(thin_power(x, u, n), u.T @ a @ a.T) < 1e-12


@pytest.mark.parametrize("spatial,ranks", [
    ((5, 4), (3, 2)),  # one Kronecker GEMM
    ((4, 4), (1, 2)),  # the same, rank 1 (torch.kron refuses some transposed views)
    ((17, 16), (3, 2)),  # 272 > 256 elements: one mode at a time
    ((5, 4), (3, None)),  # a kept mode: one mode at a time
])
def test_trailing_product_is_the_mode_products(spatial, ranks):
    """X x_2 M_2 x_3 M_3 equals the mode products of the definition, by either route; the
    matrices are transposed factors (M = U^T), as ``project`` passes them."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, *spatial, dtype=DTYPE)
    matrices = [None if k is None else torch.randn(size, k, dtype=DTYPE).T
                for size, k in zip(spatial, ranks, strict=True)]
    want = x
    for n, m in enumerate(matrices, start=2):
        if m is not None:
            want = tl.tenalg.mode_dot(want, m, n)
    assert rel(trailing_product(x, matrices), want) < 1e-12


@pytest.mark.parametrize("channel_rank", [2, 9])  # thin (channels first) / wide (last)
def test_project_is_the_core_in_either_order(channel_rank):
    """S = X x_n U_n^T over every factor, whichever order ``project`` takes."""
    torch.manual_seed(0)
    x = torch.randn(6, 10, 4, 2, dtype=DTYPE)
    factors = [torch.linalg.qr(torch.randn(size, k, dtype=DTYPE)).Q
               for size, k in zip(x.shape, (3, channel_rank, 2, 1), strict=True)]
    assert (as_slices(x, 1, channel_rank) is not None) == (channel_rank == 2)
    want = tl.tenalg.multi_mode_dot(x, factors, transpose=True)
    assert rel(project(x, tuple(factors)), want) < 1e-12


@pytest.mark.parametrize("n", [2, 1, 3])
def test_mode_gram_lower_triangle_is_the_unfoldings_gram(n):
    """On 14 x 15 slices (mode 2) the batched sum over slices, elsewhere ``gram_lower``:
    the lower triangle is A_(n) A_(n)^T's either way."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 14, 15, dtype=DTYPE)
    a = tl.unfold(x, n)
    got = mode_gram(x, n)
    assert rel(got.tril(), (a @ a.T).tril()) < 1e-12


def test_hosvd_matches_full_svd_reference():
    """Gram-route HOSVD: the reference's ranks and the same reconstruction."""
    torch.manual_seed(0)
    x = torch.randn(16, 8, 6, 5) @ torch.randn(5, 5)  # correlated last mode
    for eps in (0.5, 0.8, 0.9):
        mine = hosvd(x, lambda shape, ratios, e=eps: eps_ranks(shape, ratios, e), range(4))
        ref = reference_hosvd(x, eps)
        assert mine.ranks == ref.ranks
        assert rel(mine.to_tensor(), ref.to_tensor()) < 1e-3


def test_decompositions_run_lapack_on_one_thread_and_give_the_thread_count_back(monkeypatch):
    """eigh and QR run on one intra-op thread, the rank rule and the GEMMs on the caller's;
    the caller's count is restored after hosvd and ASI's step, also when the rank rule
    raises."""
    seen: dict[str, list[int]] = {"eigh": [], "qr": [], "choose": []}
    for name in ("eigh", "qr"):
        real = getattr(torch.linalg, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name].append(torch.get_num_threads())
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch.linalg, name, spy)

    def choose(shape, ratios):
        seen["choose"].append(torch.get_num_threads())
        return (8, 6, 2)  # only mode 2 truncated: hosvd needs no QR, ASI one

    def refuse(shape, ratios):
        raise ValueError("no ranks")

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(8, 6, 5)
        t = hosvd(x, choose, range(3))
        subspace_iteration(x, t.factors, t.ranks)
        assert seen == {"eigh": [1, 1, 1], "qr": [1], "choose": [2]}
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="no ranks"):
            hosvd(torch.randn(8, 6, 5), refuse, range(3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- wrapping contract

class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        )
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("method", METHODS)
def test_wrap_contract(method):
    torch.manual_seed(0)
    model = Net()
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    model = wrap_last_layers(model, method, 3)
    assert list(model.state_dict()) == keys
    assert all(params[n] is p for n, p in model.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{w}" for m in ("features.3", "features.6", "head")
                         for w in ("weight", "bias")}
    assert [n for n, _ in wrapped_layers(model)] == ["features.3", "features.6", "head"]
    assert len(trainable_layers(model)) == 4
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    grouped = model.features[3].weight
    before = grouped.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert not torch.equal(grouped, before)
    assert compressed_bytes(model) > 0
    assert len(layer_ranks(model)) == 3


@pytest.mark.parametrize("method", ["svd", "hosvd", "asi", "gradfilter"])
def test_saved_storages_are_the_reported_bytes(method):
    """What autograd really keeps for a wrapped layer is what compressed_bytes reports."""
    conv = nn.Conv2d(8, 6, 3, padding=1)
    model = wrap_last_layers(nn.Sequential(conv), method, 1)
    x = torch.randn(16, 8, 6, 6).relu() + torch.randn(1, 8, 1, 1)
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if not any(storage.data_ptr() == p.untyped_storage().data_ptr()
                   for p in conv.parameters()):
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    for _ in range(2):  # asi: first and warm-started steps
        storages.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x)
        y.sum().backward()
        assert sum(storages.values()) == compressed_bytes(model) < x.numel() * 4


def test_first_layer_keeps_no_weight_and_skips_dx():
    """An input that needs no grad (the region's first layer): W is not saved, no dX."""
    conv = nn.Conv2d(3, 4, 3)
    model = wrap_last_layers(nn.Sequential(conv), "hosvd", 1)
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.untyped_storage().data_ptr()) or t, lambda t: t
    ):
        y = model(torch.randn(2, 3, 6, 6))
    assert saved and conv.weight.untyped_storage().data_ptr() not in saved
    y.sum().backward()
    assert conv.weight.grad is not None


def test_rewrap_and_lean_region():
    model = wrap_last_layers(Net(), "hosvd", 2)
    lean = [type(m).__name__ for m in model.features]
    assert lean[:6] == ["Conv2d", "EvalBatchNorm2d", "ReLU6", "Conv2d", "EvalBatchNorm2d",
                        "ReLU"]
    assert lean[6:] == ["CompressedConv2d", "FrozenBatchNorm2d", "LeanReLU6"]
    model = wrap_last_layers(model, "vanilla", 1)
    assert [type(m).__name__ for m in model.features][6:] == ["Conv2d", "EvalBatchNorm2d",
                                                              "ReLU6"]


@pytest.mark.parametrize("method", ["hosvd", "asi"])
def test_budget_caps_stored_bytes(method):
    torch.manual_seed(0)
    model = wrap_last_layers(Net(), method, 3, budget_bytes=4000)
    vanilla = wrap_last_layers(Net(), "vanilla", 3)
    for _ in range(2):
        x = torch.randn(16, 3, 8, 8)
        model(x).sum().backward()
        vanilla(x).sum().backward()
        assert 2000 < compressed_bytes(model) <= 4000 < compressed_bytes(vanilla)


# ---------------------------------------------------------------- lean layers

def saved_bytes(fn, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, total


@pytest.mark.parametrize("n", [1, 8, 13, 1000])
def test_bits_roundtrip(n):
    mask = torch.rand(n) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


@pytest.mark.parametrize("index", [2, 5, 7])  # ReLU6, ReLU, BatchNorm
def test_lean_layers_match_torch(index):
    torch.manual_seed(0)
    plain = Net().eval()
    plain.features[7].running_var.uniform_(0.5, 2.0)
    lean = wrap_last_layers(copy.deepcopy(plain), "hosvd", 4).features[index]
    x = torch.randn(4, 8, 5, 5) * 4  # past 6 too
    x[0, 0, 0, :2] = torch.tensor([0.0, 6.0])  # the clamp edges
    results = []
    for layer in (plain.features[index], lean):
        xi = x.clone().requires_grad_(True)
        y, nbytes = saved_bytes(layer, xi)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape))
        results.append((y, xi.grad, nbytes))
    (y, dx, torch_bytes), (ly, ldx, lean_bytes) = results
    assert torch.allclose(y, ly, atol=1e-6) and torch.allclose(dx, ldx, atol=1e-6)
    assert lean_bytes <= max(x.numel() // 8, 8 * 4) < torch_bytes


# ---------------------------------------------------------------- gradient filter

@pytest.mark.parametrize("radius", [2, 4])
@pytest.mark.parametrize("kind,stride", [("standard", 1), ("grouped", 2), ("depthwise", 2)])
def test_gradfilter_conv_equals_pooled_computation(kind, stride, radius):
    torch.manual_seed(0)
    conv = make_conv(kind, stride, 1, 1)
    model = wrap_last_layers(nn.Sequential(conv), "gradfilter", 1, radius=radius)
    x = torch.randn(2, conv.in_channels, 11, 10, dtype=DTYPE)
    _, dw, _ = grads(model, conv, x)
    dy = torch.randn(conv(x).shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    want = torch.zeros_like(conv.weight)
    cg, og, step = conv.in_channels // conv.groups, conv.out_channels // conv.groups, radius
    for ph, pw in product(range(-(-dy.shape[2] // step)), range(-(-dy.shape[3] // step))):
        dy_sum = dy[:, :, ph * step:(ph + 1) * step, pw * step:(pw + 1) * step].sum((2, 3))
        xs = step * stride
        x_mean = x[:, :, ph * xs:(ph + 1) * xs, pw * xs:(pw + 1) * xs]
        x_mean = x_mean.mean((2, 3)) if x_mean.numel() else torch.zeros(x.shape[:2])
        for o in range(conv.out_channels):
            group = o // og
            want[o, :, :, :] += (dy_sum[:, o, None] * x_mean[:, group * cg:(group + 1) * cg]
                                 ).sum(0)[:, None, None]
    assert rel(dw, want) < 1e-10
    patches = -(-dy.shape[2] // radius) * -(-dy.shape[3] // radius)
    assert compressed_bytes(model) == x.shape[0] * x.shape[1] * patches * x.element_size()


def test_gradfilter_linear_tokens():
    linear = nn.Linear(6, 3, dtype=DTYPE)
    model = wrap_last_layers(nn.Sequential(linear), "gradfilter", 1, radius=2)
    x = torch.randn(2, 5, 6, dtype=DTYPE)
    _, dw, _ = grads(model, linear, x)
    dy = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    want = sum(dy[:, p:p + 2].sum(1).T @ x[:, p:p + 2].mean(1) for p in (0, 2, 4))
    assert rel(dw, want) < 1e-10


# ---------------------------------------------------------------- ASI

def test_asi_fixed_ranks_and_convergence():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1)
    model = wrap_last_layers(nn.Sequential(conv), "asi", 1, rank=(3, 2, 4, 4))
    ranks = []
    for _ in range(3):
        model(torch.randn(8, 8, 6, 6)).sum().backward()
        ranks.append(layer_ranks(model)[0])
    assert ranks == [[3, 2, 4, 4]] * 3
    # a fixed low-rank-ish input: the iterated factors reach the HOSVD subspace
    x = hosvd(torch.randn(8, 8, 6, 6), lambda s, r: (3, 2, 4, 4), range(4)).to_tensor()
    x = x + 1e-3 * torch.randn_like(x)
    for _ in range(30):
        model(x).sum().backward()
    reference = hosvd(x, lambda s, r: (3, 2, 4, 4), range(4))
    for u, v in zip(conv.method.factors, reference.factors, strict=True):
        assert torch.allclose(u @ u.T, v @ v.T, atol=1e-3)


# ---------------------------------------------------------------- shared inputs

class Downsample(nn.Module):
    """A ResNet block's entry: conv1 and the 1x1 shortcut read the same input (``copy`` gives
    the shortcut an equal copy instead; ``nudge`` changes the input in place between them)."""

    def __init__(self, copy_input: bool = False, nudge: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 6, 3, stride=2, padding=1, dtype=DTYPE)
        self.shortcut = nn.Conv2d(8, 6, 1, stride=2, dtype=DTYPE)
        self.copy_input, self.nudge = copy_input, nudge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0  # a non-leaf that may be changed in place
        y = self.conv1(x)
        if self.nudge:
            x.add_(0.5)
        return y + self.shortcut(x.clone() if self.copy_input else x)


def downsample_steps(method: str, steps: int, nudge: bool = False, **kwargs) -> list:
    """Per model (the input shared, then an equal copy for the shortcut; same weights and
    data): both layers' weight gradients at each step, and whether each step's two layers got
    the same Tucker object."""
    torch.manual_seed(0)
    base = Downsample(nudge=nudge)
    x = torch.randn(6, 8, 9, 9, dtype=DTYPE)
    results = []
    for copy_input in (False, True):
        model = copy.deepcopy(base)
        model.copy_input = copy_input
        wrap_last_layers(model, method, 2, **kwargs)
        seen = [spy_tuckers(model.conv1), spy_tuckers(model.shortcut)]
        per_step = []
        for step in range(steps):
            _, dw1, _ = grads(model, model.conv1, x * (1 + step / 10), dy_seed=step)
            per_step.append((dw1, model.shortcut.weight.grad))
        results.append((per_step, [a is b for a, b in zip(*seen, strict=True)]))
    return results


@pytest.mark.parametrize("method,kwargs,steps", [("hosvd", {"eps": 0.9}, 1),
                                                 ("asi", {"eps": 0.9}, 3),
                                                 ("asi", {"rank": 2}, 3)])
def test_layers_reading_one_input_share_its_decomposition(method, kwargs, steps):
    (shared, same), (unshared, copies) = downsample_steps(method, steps, **kwargs)
    assert same == [True] * steps and copies == [False] * steps
    for (dw1, dw2), (ref1, ref2) in zip(shared, unshared, strict=True):
        assert torch.equal(dw1, ref1) and torch.equal(dw2, ref2)


def test_an_input_changed_in_place_is_decomposed_again():
    (nudged, same), (reference, _) = downsample_steps("hosvd", 1, eps=0.9, nudge=True)
    assert same == [False]
    assert torch.equal(nudged[0][1], reference[0][1])


def test_layers_with_other_settings_decompose_alone():
    torch.manual_seed(0)
    model = Downsample()
    wrap_last_layers(model, "hosvd", 2, eps=0.9)
    model.shortcut.method.eps = 0.8
    seen = [spy_tuckers(model.conv1), spy_tuckers(model.shortcut)]
    grads(model, model.conv1, torch.randn(6, 8, 9, 9, dtype=DTYPE))
    assert seen[0][0] is not seen[1][0]


# ---------------------------------------------------------------- argument checks

@pytest.mark.parametrize("method,last_k,params,name", [
    ("qr", 1, {}, "method"),
    ("svd", 0, {}, "last_k"),
    ("svd", 5, {}, "last_k"),
    ("svd", 1, {"eps": 0.0}, "eps"),
    ("hosvd", 1, {"eps": 1.5}, "eps"),
    ("asi", 1, {"rank": 0}, "rank"),
    ("hosvd", 1, {"rank": (2, 0)}, "rank"),
    ("asi", 1, {"rank": 2, "budget_bytes": 10}, "rank"),
    ("hosvd", 1, {"budget_bytes": 0}, "budget_bytes"),
    ("gradfilter", 1, {"radius": 3}, "radius"),
    ("svd", 1, {"rank": 2}, "rank"),
    ("vanilla", 1, {"eps": 0.8}, "eps"),
])
def test_bad_arguments_name_the_argument(method, last_k, params, name):
    with pytest.raises(ValueError, match=name):
        wrap_last_layers(Net(), method, last_k, **params)


def test_rank_tuple_must_match_modes():
    model = wrap_last_layers(nn.Sequential(nn.Linear(4, 2)), "hosvd", 1, rank=(2, 2, 2, 2))
    with pytest.raises(ValueError, match="rank"):
        model(torch.randn(3, 4))


def test_unsupported_padding_names_the_layer():
    with pytest.raises(ValueError, match="padding"):
        wrap_last_layers(nn.Sequential(nn.Conv2d(2, 2, 3, padding="same")), "hosvd", 1)


@pytest.mark.parametrize(("rows", "cols"), [(1, 37), (200, 37), (63, 40000), (257, 2100),
                                            (300, 1500)])
def test_gram_lower_is_the_lower_triangle_of_the_gram(rows, cols):
    """Whole (small) or blocked Gram: on and below the diagonal exactly A A^T (what eigh
    reads)."""
    a = torch.randn(rows, cols, dtype=DTYPE)
    assert torch.allclose(gram_lower(a).tril(), (a @ a.T).tril(), rtol=1e-12, atol=1e-10)
