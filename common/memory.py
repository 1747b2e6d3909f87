"""Measured memory footprint of one training step, and budget checks.

``measure`` runs one real forward/backward (and optimizer step, when given one) and reports:

- ``activation_bytes``: what autograd really keeps for backward. Every tensor packed by
  ``torch.autograd.graph.saved_tensors_hooks`` during the forward is counted once per untyped
  storage (a view saved twice, or two views of one buffer, count once, at the storage's full
  size); storages of model parameters and buffers are excluded (they are ``param_bytes``).
  Compressed layers that keep factors through ``ctx.save_for_backward`` are counted the same way.
- ``compressed_bytes``: the paper's metric, bytes the trainable Conv2d/Linear layers store for
  dW -- ``common.compression.compressed_bytes`` for a wrapped model; for a plain model the
  bytes of the inputs those layers saw (what vanilla backprop keeps for dW).
- ``param_bytes`` / ``trainable_param_bytes``: all parameters / those with ``requires_grad``.
- ``grad_bytes``: the ``.grad`` storages of the trainable parameters after the backward.
- ``optimizer_bytes``: the optimizer's state tensors after one step; without an optimizer, what
  SGD with momentum would hold (one buffer per trainable parameter).
- ``peak_forward_bytes``: the largest number of bytes held at once during the forward (and loss)
  by tensors the step created, plus the input batch. Tracked with a ``TorchDispatchMode``:
  each output storage of an aten op is added when first seen and subtracted when it is freed
  (``weakref.finalize`` on the storage). Views and in-place results share a storage and count
  once; parameters and buffers are excluded. It sees every tensor the ops allocate, not kernel
  scratch space (e.g. oneDNN workspaces), allocator caching or fragmentation: a lower bound of
  what the process's RSS grows by, exact at the tensor level.
- ``peak_step_bytes``: the same, tracked on through the backward and the optimizer step: the
  peak of the whole training step (kept activations, the backward's temporaries, gradients and
  the optimizer state it allocates). Without an optimizer, the step ends after the backward.

Derived: ``training_bytes = activation + grad + optimizer`` (what a device's training-memory
budget must hold, the weights being stored anyway), ``transient_bytes = max(0, peak_forward -
activation)`` (temporaries of the forward on top of what is kept) and ``total_bytes = param +
training + transient``.

``measure`` leaves the model and optimizer as it found them: parameters, buffers (BatchNorm
running statistics), gradients, optimizer state and the RNG state are restored afterwards.
State a method keeps outside the state dict (e.g. ASI's warm-start factors) does advance.

``cgroup_memory`` reads what the kernel accounts for the whole process instead: the peak and the
limit of its memory cgroup (a deployment node's group, a compose container).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, computed_field
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from common.compression import compressed_bytes as wrapped_compressed_bytes
from common.compression import wrapped_layers

Bytes = int


class MemoryReport(BaseModel):
    """Bytes of one measured training step (see the module docstring for each field)."""

    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(ge=0)
    activation_bytes: Bytes = Field(ge=0)
    compressed_bytes: Bytes = Field(ge=0)
    param_bytes: Bytes = Field(ge=0)
    trainable_param_bytes: Bytes = Field(ge=0)
    grad_bytes: Bytes = Field(ge=0)
    optimizer_bytes: Bytes = Field(ge=0)
    peak_forward_bytes: Bytes = Field(ge=0)
    peak_step_bytes: Bytes = Field(ge=0)

    @computed_field
    @property
    def training_bytes(self) -> Bytes:
        return self.activation_bytes + self.grad_bytes + self.optimizer_bytes

    @computed_field
    @property
    def transient_bytes(self) -> Bytes:
        return max(0, self.peak_forward_bytes - self.activation_bytes)

    @computed_field
    @property
    def total_bytes(self) -> Bytes:
        return self.param_bytes + self.training_bytes + self.transient_bytes


def storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    """(data pointer, bytes) of the tensor's untyped storage; None for an empty storage."""
    storage = tensor.untyped_storage()
    nbytes = storage.nbytes()
    return (storage.data_ptr(), nbytes) if nbytes else None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> Bytes:
    """Bytes of the distinct storages behind ``tensors``."""
    keys = {storage_key(t) for t in tensors}
    return sum(key[1] for key in keys if key is not None)


def _model_pointers(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}


class SavedTensors:
    """Context manager: the distinct storages autograd saves for backward, minus ``exclude``."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key is not None and key[0] not in self.exclude:
            self.storages[key[0]] = key[1]
        return tensor

    @property
    def nbytes(self) -> Bytes:
        return sum(self.storages.values())

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _signature(value: object) -> object:
    """What a FLOP formula reads of an op argument: a tensor's shape, a sequence's elements'
    signatures, any other value itself (strides, paddings, flags)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, list | tuple):
        return tuple(_signature(v) for v in value)
    return value


class StepTrace(TorchDispatchMode):
    """Watches the aten ops run under it: the bytes of the live storages they create and their
    peak, and (``count_flops``) the ops' FLOPs.

    Live bytes: a storage is counted from the first op output that uses it until it is freed
    (``weakref.finalize`` on the storage); storages whose data pointer is in ``exclude``
    (parameters, buffers, inputs) are never counted. ``peak`` is the largest ``live`` seen.

    FLOPs: ``flops`` = sum over ops of ``torch.utils.flop_counter.flop_registry[op](args, out)``
    (matmuls, convolutions and their backward, attention; every other op counts 0): the same
    count as ``FlopCounterMode.get_total_flops()`` for eager CPU training steps, for a fraction
    of its cost: no per-module breakdown (its module hooks run at every layer call), no re-entry
    of the mode per op to try decompositions (ops that reach a dispatch mode in eager mode are
    already decomposed). A formula's value depends on the shapes and the other arguments only,
    so it is computed once per (op, :func:`_signature` of the arguments) and remembered for the
    process: a client's steps and the clients after it repeat the same few dozen convolutions.

    One mode for both, as every op pays the Python dispatch once per mode on the stack.
    """

    _flops_of: dict[tuple, int] = {}  # (op, signature) -> FLOPs, shared by every trace

    def __init__(self, exclude: set[int], count_flops: bool = False) -> None:
        super().__init__()
        self.exclude = exclude
        self.count_flops = count_flops
        self.tracked: set[int] = set()
        self.live = 0
        self.peak = 0
        self.flops = 0

    def _free(self, pointer: int, nbytes: int) -> None:
        self.tracked.discard(pointer)
        self.live -= nbytes

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in self.tracked or pointer in self.exclude:
            return
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        self.tracked.add(pointer)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, pointer, nbytes).atexit = False

    def _count(self, func, args: tuple, kwargs: dict, out: object) -> None:
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            return
        key = (func, _signature(args), _signature(tuple(sorted(kwargs.items()))))
        flops = self._flops_of.get(key)
        if flops is None:
            flops = self._flops_of[key] = formula(*args, **kwargs, out_val=out)
        self.flops += flops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.count_flops:
            self._count(func, args, kwargs, out)
        if type(out) is torch.Tensor:
            self._track(out)
        else:
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self._track(tensor)
        return out


@contextmanager
def _input_bytes(model: nn.Module) -> Iterator[list[int]]:
    """Collects the input bytes the forward feeds to trainable Conv2d/Linear layers."""
    seen: list[int] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append(inputs[0].numel() * inputs[0].element_size())

    handles = [
        m.register_forward_pre_hook(record)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.requires_grad
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]


class OutOfBudget(RuntimeError):
    """A measured step needed more training memory than the device's budget."""

    def __init__(self, report: MemoryReport, budget_bytes: Bytes) -> None:
        super().__init__(f"out of memory: needs {report.training_bytes} bytes, "
                         f"budget {budget_bytes}")
        self.report = report
        self.budget_bytes = budget_bytes


class StepProbe:
    """Measures one training step from inside a training loop, the step staying applied::

        probe = StepProbe(model)
        with probe.forward(inputs):
            loss = loss_fn(model(inputs), targets)
        loss.backward()
        probe.after_backward()
        optimizer.step()
        report = probe.after_step(optimizer)

    Live tensors are tracked from the forward's start to :meth:`after_step` (the step's peak),
    gradients are counted after the backward, optimizer state after the step (without an
    optimizer: one SGD-momentum buffer per trainable parameter). With ``budget_bytes``,
    ``after_step`` raises :class:`OutOfBudget` when ``training_bytes`` exceed it, as a device
    would fail at its first step. With ``count_flops``, :attr:`flops` is the forward's and
    backward's FLOPs (:class:`StepTrace`). A step that fails midway must be ended with
    :meth:`close`.
    """

    def __init__(self, model: nn.Module, budget_bytes: Bytes | None = None,
                 count_flops: bool = False) -> None:
        self.model = model
        self.budget_bytes = budget_bytes
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.flops: int | None = None
        self._exclude = _model_pointers(model)
        self._fields: dict[str, int] = {}
        self._count_flops = count_flops
        self._trace: StepTrace | None = None
        self._input_bytes = 0

    @contextmanager
    def forward(self, inputs: torch.Tensor) -> Iterator[None]:
        """Wrap the forward and loss: saved tensors, forward peak and layer inputs; live tensors
        from here until :meth:`after_step`, FLOPs until :meth:`after_backward`."""
        self._input_bytes = storage_bytes([inputs])
        self._trace = StepTrace(self._exclude | {inputs.untyped_storage().data_ptr()},
                                self._count_flops)
        self._trace.__enter__()
        try:
            with SavedTensors(self._exclude) as saved, _input_bytes(self.model) as seen:
                yield
        except BaseException:
            self.close()
            raise
        self._fields.update(
            batch_size=len(inputs),
            activation_bytes=saved.nbytes,
            compressed_bytes=(wrapped_compressed_bytes(self.model)
                              if wrapped_layers(self.model) else sum(seen)),
            peak_forward_bytes=self._trace.peak + self._input_bytes,
        )

    def _stop_counting_flops(self) -> None:
        if self._trace is not None and self._trace.count_flops:
            self._trace.count_flops = False
            self.flops = self._trace.flops

    def _stop_tracking(self) -> int:
        """Leave the trace; the step's peak so far (0 if it never started)."""
        trace, self._trace = self._trace, None
        if trace is None:
            return 0
        trace.__exit__(None, None, None)
        return trace.peak + self._input_bytes

    def close(self) -> None:
        """Stop counting FLOPs and tracking tensors if the step never reached its end."""
        self._stop_counting_flops()
        self._stop_tracking()

    def after_backward(self) -> None:
        self._stop_counting_flops()
        self._fields["grad_bytes"] = storage_bytes(
            p.grad for p in self.trainable if p.grad is not None)

    def after_step(self, optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
        """The step's report (raises :class:`OutOfBudget` over ``budget_bytes``)."""
        state = self.trainable if optimizer is None else _optimizer_state_tensors(optimizer)
        report = MemoryReport(
            **self._fields,
            peak_step_bytes=self._stop_tracking(),
            optimizer_bytes=storage_bytes(state),
            param_bytes=storage_bytes(self.model.parameters()),
            trainable_param_bytes=storage_bytes(self.trainable),
        )
        if self.budget_bytes is not None and not fits(report, self.budget_bytes):
            raise OutOfBudget(report, self.budget_bytes)
        return report


@contextmanager
def _restored(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> Iterator[None]:
    """Put parameters, buffers, gradients, optimizer state and the RNG back afterwards."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    saved_weights = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    saved_grads = [p.grad for p in trainable]
    saved_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    for p in trainable:
        p.grad = None
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            model.load_state_dict(saved_weights)
        for p, grad in zip(trainable, saved_grads, strict=True):
            p.grad = grad
        if optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)


def measure(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> MemoryReport:
    """Measure one training step of ``model`` on (inputs, targets); the model is unchanged.

    The model is used in whatever train/eval mode the caller set.
    """
    probe = StepProbe(model)
    with _restored(model, optimizer):
        try:
            with probe.forward(inputs):
                loss = loss_fn(model(inputs), targets)
            if loss.requires_grad:
                loss.backward()
            del loss
            probe.after_backward()
            if optimizer is not None:
                optimizer.step()
            return probe.after_step(optimizer)
        finally:
            probe.close()


def fits(report: MemoryReport, budget_bytes: int) -> bool:
    """True when the step's ``training_bytes`` (activations + gradients + optimizer state)
    stay within the device's training-memory budget."""
    return report.training_bytes <= budget_bytes


CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 2**62  # a v1 limit this large is "no limit" (v1 writes 2**63 - 1, page-rounded)
# (peak, limit) file names of the cgroup versions' memory controllers
CGROUP_FILES = {1: ("memory.max_usage_in_bytes", "memory.limit_in_bytes"),
                2: ("memory.peak", "memory.max")}


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < UNLIMITED else None


def cgroup_memory(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
                  ) -> tuple[int | None, int | None]:
    """(peak, limit) in bytes of this process's memory cgroup, as the kernel accounts it: v1
    ``memory.max_usage_in_bytes`` / ``memory.limit_in_bytes`` under ``root/memory``, else v2
    ``memory.peak`` / ``memory.max`` under ``root``. The group is the path
    ``/proc/self/cgroup`` names, or the mount's root where that path is not visible (a
    container sees its own group there). None for what is unreadable or unlimited."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    groups = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            groups[1] = (root / "memory", path)
        elif controllers == "":
            groups.setdefault(2, (root, path))
    for version in (1, 2):
        if version not in groups:
            continue
        base, path = groups[version]
        peak_name, limit_name = CGROUP_FILES[version]
        for folder in (base / path.lstrip("/"), base):
            if (folder / limit_name).exists():  # (v2's memory.peak needs Linux 5.19)
                return _read_bytes(folder / peak_name), _read_bytes(folder / limit_name)
    return None, None


def format_bytes(nbytes: float) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while abs(nbytes) >= 1024 and power < len(units) - 1:
        nbytes /= 1024
        power += 1
    return f"{nbytes:.0f} B" if power == 0 else f"{nbytes:.1f} {units[power]}"
