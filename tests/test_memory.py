"""Measured footprint: saved-for-backward bytes against hand counts, dedup, exclusions, peak,
restoration of the model, and the compressed methods against vanilla."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from common.compression import wrap_last_layers
from common.memory import (
    MemoryReport,
    OutOfBudget,
    StepProbe,
    cgroup_memory,
    fits,
    format_bytes,
    measure,
)
from common.models import build_model
from common.train import batchnorm_eval, sgd, train

F32 = 4


def _sum_loss(out: torch.Tensor, _targets: object) -> torch.Tensor:
    return out.sum()  # its backward keeps nothing


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )
    net.train()
    net[1].eval()
    return net


def test_tiny_net_counts_exactly_what_autograd_saves() -> None:
    """Conv keeps x; eval BN keeps its input (the conv output); the in-place ReLU keeps its
    result, which the Linear saves again through a view (counted once); weights and BN
    statistics are parameters/buffers, not activations."""
    net, batch = _tiny_net(), 2
    x = torch.randn(batch, 1, 8, 8)
    report = measure(net, x, None, _sum_loss)
    map_bytes = batch * 4 * 8 * 8 * F32
    assert report.activation_bytes == x.nbytes + map_bytes + map_bytes
    assert report.compressed_bytes == x.nbytes + map_bytes  # inputs of the conv and the Linear
    params = sum(p.nbytes for p in net.parameters())
    assert report.param_bytes == report.trainable_param_bytes == params
    assert report.grad_bytes == report.optimizer_bytes == params  # SGD momentum assumed
    # live at the peak: input, conv out, BN out (ReLU'd in place), Linear out, the loss
    assert report.peak_forward_bytes == x.nbytes + 2 * map_bytes + batch * 3 * F32 + F32
    assert report.training_bytes == report.activation_bytes + 2 * params
    assert report.total_bytes == params + report.training_bytes + report.transient_bytes


class _Square(nn.Module):
    """y = (x W^T)^2 * s: the product saves h twice (one storage); s is a Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 5, bias=False)
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return (h * h) * self.scale


def test_same_storage_counted_once_and_parameters_excluded() -> None:
    x = torch.randn(3, 6)
    report = measure(_Square(), x, None, _sum_loss)
    # x (saved by the matmul), h (saved twice by h*h), h*h (saved by the product with s)
    assert report.activation_bytes == x.nbytes + 2 * 3 * 5 * F32


def test_frozen_layers_keep_nothing() -> None:
    net = _tiny_net()
    net[0].requires_grad_(False)
    net[1].requires_grad_(False)
    x = torch.randn(2, 1, 8, 8)
    report = measure(net, x, None, _sum_loss)
    assert report.activation_bytes == 2 * 4 * 8 * 8 * F32  # only the Linear's input
    assert report.trainable_param_bytes == sum(p.nbytes for p in net[4].parameters())


def test_peak_counts_temporaries_freed_in_the_forward() -> None:
    class Double(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(10, 1000).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) * 2  # linear(x) dies after the product is made

    x = torch.randn(5, 10)
    report = measure(Double(), x, None, _sum_loss)
    assert report.activation_bytes == 0
    assert report.peak_forward_bytes == x.nbytes + 2 * 5 * 1000 * F32


def test_step_peak_tracks_the_backward_and_the_optimizer_step() -> None:
    """Linear(1000 -> 1000) on one sample, no optimizer: the forward holds x, y and the sum;
    at the backward's peak the kept x is alive with dW (the gradient; dL/dy is a scalar expanded,
    a few bytes). With SGD momentum the step adds a buffer of dW's size."""
    x = torch.randn(1, 1000)
    net = nn.Linear(1000, 1000, bias=False)
    report = measure(net, x, None, _sum_loss)
    weight = 1000 * 1000 * F32
    assert report.peak_forward_bytes == x.nbytes + 1000 * F32 + F32  # x, y, the sum
    assert report.grad_bytes == weight
    assert x.nbytes + weight <= report.peak_step_bytes <= x.nbytes + weight + 4 * F32
    momentum = measure(net, x, None, _sum_loss, torch.optim.SGD(net.parameters(), lr=0.1,
                                                                momentum=0.9))
    assert momentum.peak_step_bytes >= x.nbytes + 2 * weight  # dW and the momentum buffer
    assert not torch._C._len_torch_dispatch_stack()  # tracking ended with the step


def test_measure_restores_model_grads_optimizer_and_rng() -> None:
    net = _tiny_net()
    net[1].train()  # running statistics would move
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net[4].weight.grad = torch.full_like(net[4].weight, 7.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.9)
    torch.manual_seed(5)
    report = measure(net, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]),
                     nn.CrossEntropyLoss(), optimizer)
    after_rng = torch.rand(1)
    torch.manual_seed(5)
    torch.randn(4, 1, 8, 8)
    assert torch.equal(after_rng, torch.rand(1))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(net[4].weight.grad, torch.full_like(net[4].weight, 7.0))
    assert net[0].weight.grad is None
    assert optimizer.state_dict()["state"] == {}
    assert report.optimizer_bytes == report.trainable_param_bytes  # one momentum buffer each


def test_adam_state_is_measured() -> None:
    net = _tiny_net()
    optimizer = torch.optim.Adam(net.parameters())
    report = measure(net, torch.randn(2, 1, 8, 8), None, _sum_loss, optimizer)
    steps = len(list(net.parameters())) * F32  # one float32 step counter per parameter
    assert report.optimizer_bytes == 2 * report.trainable_param_bytes + steps


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))


def _measure(method: str, last_k: int, batch: tuple, **params: object) -> MemoryReport:
    model = wrap_last_layers(build_model("mobilenetv2"), method, last_k, **params)
    model.train()
    return measure(model, *batch, nn.CrossEntropyLoss())


def test_vanilla_last_layer_of_mobilenetv2(batch: tuple) -> None:
    """Last layer only: the Linear keeps its (dropped-out) input, the frozen Dropout nothing;
    cross-entropy keeps log-probabilities, targets and a scalar total weight."""
    report = _measure("vanilla", 1, batch)
    features = 16 * 1280 * F32
    assert report.compressed_bytes == features
    loss_bytes = 16 * 10 * F32 + batch[1].nbytes + F32
    assert report.activation_bytes == features + loss_bytes
    assert report.trainable_param_bytes == (1280 * 10 + 10) * F32


def test_hosvd_keeps_less_than_vanilla(batch: tuple) -> None:
    vanilla = _measure("vanilla", 4, batch)
    hosvd = _measure("hosvd", 4, batch, eps=0.8)
    assert hosvd.compressed_bytes < vanilla.compressed_bytes
    assert hosvd.activation_bytes < vanilla.activation_bytes
    assert hosvd.grad_bytes == vanilla.grad_bytes


def _step(method: str, last_k: int, batch: tuple, **params: object) -> MemoryReport:
    """One measured SGD step of MobileNetV2 with frozen BatchNorm statistics."""
    torch.manual_seed(0)
    model = batchnorm_eval(wrap_last_layers(build_model("mobilenetv2"), method, last_k,
                                            **params))
    optimizer = sgd([p for p in model.parameters() if p.requires_grad], 0.05)
    return measure(model, *batch, nn.CrossEntropyLoss(), optimizer)


def _figures(name: str, report: MemoryReport) -> str:
    fields = ("activation_bytes", "grad_bytes", "optimizer_bytes", "training_bytes",
              "peak_forward_bytes", "peak_step_bytes")
    return f"{name:>16}: " + ", ".join(
        f"{f.removesuffix('_bytes')} {format_bytes(getattr(report, f))}" for f in fields)


def test_all_layers_trainable_vanilla_step_peak_above_hosvd(batch: tuple) -> None:
    """Every layer trainable: the kept activations dominate the whole step, so HOSVD's
    compression shows in the measured peak (not only in the bytes it keeps)."""
    layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in build_model("mobilenetv2").modules())
    vanilla = _step("vanilla", layers, batch)
    hosvd = _step("hosvd", layers, batch, eps=0.8)
    print(_figures("vanilla, all", vanilla), _figures("hosvd 0.8, all", hosvd), sep="\n")
    assert vanilla.activation_bytes > vanilla.grad_bytes + vanilla.optimizer_bytes
    assert vanilla.peak_step_bytes > 2 * hosvd.peak_step_bytes
    assert hosvd.peak_step_bytes > hosvd.peak_forward_bytes  # its backward is tracked too


def test_last_4_layers_step_peak_is_the_frozen_forward(batch: tuple) -> None:
    """Last 4 layers only: the step's peak is the forward's, set by the frozen early layers'
    temporaries, the same for both methods; what the methods change is the kept activations
    (and so the budget's quantity, ``training_bytes``), where gradients and momentum, equal for
    both, then dominate HOSVD's figure."""
    vanilla = _step("vanilla", 4, batch)
    hosvd = _step("hosvd", 4, batch, eps=0.8)
    print(_figures("vanilla, last 4", vanilla), _figures("hosvd 0.8, last 4", hosvd), sep="\n")
    for report in (vanilla, hosvd):
        assert report.peak_step_bytes == report.peak_forward_bytes > report.training_bytes
    assert vanilla.peak_step_bytes == hosvd.peak_step_bytes
    assert hosvd.activation_bytes < vanilla.activation_bytes / 5
    assert hosvd.grad_bytes + hosvd.optimizer_bytes > 5 * hosvd.activation_bytes


def _cgroup_files(tmp_path, proc_line: str, files: dict[str, str]):
    tmp_path.mkdir()
    proc = tmp_path / "cgroup"
    proc.write_text(f"{proc_line}\n")
    for name, value in files.items():
        (tmp_path / "root" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / name).write_text(value)
    return proc, tmp_path / "root"


def test_cgroup_memory_reads_v1_and_v2(tmp_path) -> None:
    v1 = _cgroup_files(tmp_path / "v1", "4:memory:/edgefed/g/n0", {
        "memory/edgefed/g/n0/memory.max_usage_in_bytes": "123456\n",
        "memory/edgefed/g/n0/memory.limit_in_bytes": "268435456\n"})
    assert cgroup_memory(*v1) == (123456, 268435456)
    v2 = _cgroup_files(tmp_path / "v2", "0::/docker/abc", {  # its own group at the mount's root
        "memory.peak": "7000\n", "memory.max": "max\n"})
    assert cgroup_memory(*v2) == (7000, None)
    unlimited = _cgroup_files(tmp_path / "v1u", "9:cpu,memory:/", {
        "memory/memory.max_usage_in_bytes": "5", "memory/memory.limit_in_bytes":
        "9223372036854771712"})
    assert cgroup_memory(*unlimited) == (5, None)
    old_kernel = _cgroup_files(tmp_path / "v2old", "0::/", {"memory.max": "268435456"})
    assert cgroup_memory(*old_kernel) == (None, 268435456)
    assert cgroup_memory(tmp_path / "missing", tmp_path) == (None, None)


def test_fits_and_format() -> None:
    report = measure(_tiny_net(), torch.randn(2, 1, 8, 8), None, _sum_loss)
    assert fits(report, report.training_bytes)
    assert not fits(report, report.training_bytes - 1)
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert report.model_dump()["total_bytes"] == report.total_bytes


def _hosvd_model() -> nn.Module:
    torch.manual_seed(0)
    return batchnorm_eval(wrap_last_layers(build_model("mobilenetv2"), "hosvd", 4, eps=0.8))


def test_first_training_step_is_measured_like_measure(batch: tuple) -> None:
    """StepProbe inside ``train`` reports what ``measure`` finds for the same step, and the
    step stays applied (the weights moved)."""
    model = _hosvd_model()
    optimizer = sgd([p for p in model.parameters() if p.requires_grad], 0.05)
    expected = measure(model, *batch, nn.CrossEntropyLoss(), optimizer)
    before = model.classifier[-1].weight.clone()
    loader = DataLoader(TensorDataset(*batch), batch_size=len(batch[1]))
    result = train(model, loader, optimizer, max_steps=1, probe=StepProbe(model))
    assert result.first_step == expected
    assert not torch.equal(before, model.classifier[-1].weight)


def test_first_step_over_budget_raises_out_of_budget(batch: tuple) -> None:
    model = _hosvd_model()
    loader = DataLoader(TensorDataset(*batch), batch_size=8)
    with pytest.raises(OutOfBudget, match=r"out of memory: needs \d+ bytes, budget 1024") as err:
        train(model, loader, max_steps=2, probe=StepProbe(model, budget_bytes=1024))
    assert err.value.report.training_bytes > 1024


@pytest.mark.parametrize("method, params", [
    ("vanilla", {}), ("gradfilter", {"radius": 2}), ("svd", {"eps": 0.8}),
    ("hosvd", {"eps": 0.8}), ("asi", {"rank": 2}),
])
def test_probe_counts_the_flops_of_the_measured_step(
    batch: tuple, method: str, params: dict[str, object]
) -> None:
    """Forward + backward FLOPs of the first step, as FlopCounterMode counts them directly on a
    twin model (ASI's first batch differs from later ones), for every method; the counter is
    gone afterwards (later steps run without it)."""

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return batchnorm_eval(wrap_last_layers(build_model("mobilenetv2"), method, 4, **params))

    inputs, targets = batch
    with FlopCounterMode(display=False) as direct:
        nn.functional.cross_entropy(fresh()(inputs), targets).backward()
    model = fresh()
    probe = StepProbe(model, count_flops=True)
    loader = DataLoader(TensorDataset(*batch), batch_size=len(targets))
    train(model, loader, max_steps=2, probe=probe)
    assert probe.flops == direct.get_total_flops() > 0
    assert not torch._C._len_torch_dispatch_stack()


def test_remembered_flops_follow_the_shapes() -> None:
    """FLOP formulas are remembered per op and argument shapes: the same layers at another
    batch size, stride or padding count anew, as FlopCounterMode counts them."""
    for batch, stride, padding in [(4, 1, 1), (6, 1, 1), (4, 2, 1), (4, 1, 0), (4, 1, 1)]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 5, 3, stride=stride, padding=padding), nn.Flatten(),
                            nn.LazyLinear(2))
        inputs = torch.randn(batch, 3, 8, 8)
        net(inputs)  # materialise the lazy layer
        with FlopCounterMode(display=False) as direct:
            net(inputs).sum().backward()
        probe = StepProbe(net, count_flops=True)
        with probe.forward(inputs):
            loss = net(inputs).sum()
        loss.backward()
        probe.after_backward()
        probe.after_step()
        assert probe.flops == direct.get_total_flops() > 0
