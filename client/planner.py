"""Budget planner: which fine-tuning configuration fits a device's training-memory budget.

Every candidate is MEASURED, never estimated: the model is copied, wrapped with
``common.compression.wrap_last_layers`` and one training step on a probe batch is measured with
``common.memory.measure``. A candidate fits when

    training_bytes = activation_bytes + grad_bytes + optimizer_bytes <= budget_bytes.

Policies:
- ``fixed``: exactly the experiment's (method, last_k, eps, batch); it fits or it does not.
- ``fit``: the most capable candidate that fits, searching more layers and higher eps first,
  then smaller batches, then the cheaper methods of the method's registry entry
  (:func:`candidates` gives the order). A candidate
  whose gradients and optimizer state alone, 2 * 4 bytes per trainable parameter for SGD with
  momentum, exceed the budget is skipped without a measurement. The chosen candidate is measured
  again, uncached, on the caller's probe batch, so what ``fit`` returns is what the client's own
  first-step measurement finds.

Measurements are cached per process by (model, width, image size, dataset, candidate).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from client.task import trainable_sgd
from common.compression import wrap_last_layers
from common.compression.registry import method_spec
from common.config import ExperimentConfig, Method, Policy
from common.devices import DeviceProfile
from common.memory import measure

EPS_LADDER = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5)
MOMENTUM_SLOTS = 2  # gradient + momentum buffer per trainable parameter
Params = tuple[tuple[str, float | int], ...]


@dataclass(frozen=True)
class Candidate:
    """One fine-tuning configuration: compression method, its parameters (those its registry
    entry takes, as (name, value) pairs in the entry's order), batch size."""

    method: Method
    last_k: int
    batch_size: int
    params: Params = ()

    @property
    def eps(self) -> float | None:
        """The explained-variance threshold, None where the method has none (or a fixed rank)."""
        return dict(self.params).get("eps")

    def wrap_kwargs(self) -> dict[str, float | int]:
        """Keyword arguments of ``wrap_last_layers`` for this candidate."""
        return dict(self.params)

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.params)
        return f"{self.method} last_k={self.last_k}{extra} batch={self.batch_size}"


@dataclass(frozen=True)
class Option:
    """A measured (or pruned) candidate."""

    candidate: Candidate
    training_bytes: int
    fits: bool
    measured: bool = True


@dataclass
class Plan:
    """The planner's answer for one device."""

    device: DeviceProfile
    policy: Policy
    chosen: Candidate | None
    needed_bytes: int
    options: list[Option] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.chosen is not None

    @property
    def reason(self) -> str:
        """The out-of-memory sentence a device that cannot train answers with."""
        return (f"out of memory: needs {self.needed_bytes} bytes, "
                f"budget {self.device.budget_bytes}")


def _batches(batch_size: int) -> list[int]:
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def _candidate(config: ExperimentConfig, method: Method, last_k: int, batch: int,
               eps: float | None = None) -> Candidate:
    """A candidate with the experiment's settings of the parameters ``method`` takes (see
    ``MethodSpec.choose``), ``eps`` (when given and taken) replacing the experiment's."""
    values = config.compression.model_dump()
    params = method_spec(method).choose({**values, "eps": eps or values["eps"]})
    return Candidate(method, last_k, batch, tuple(params.items()))


def _eps_values(config: ExperimentConfig, method: Method) -> list[float | None]:
    """The experiment's eps, then the lower rungs of the ladder, where the method's candidate
    takes an eps; [None] where it does not (no eps, or a fixed rank)."""
    eps = config.compression.eps
    if _candidate(config, method, 1, 1).eps is None:
        return [None]
    return [eps, *(e for e in EPS_LADDER if e < eps)]


def own_candidate(config: ExperimentConfig, batch_size: int | None = None) -> Candidate:
    """The experiment's configuration as a candidate (what ``fixed`` runs)."""
    return _candidate(config, config.compression.method, config.compression.last_k,
                      batch_size or config.batch_size)


def candidates(config: ExperimentConfig, max_batch: int | None = None) -> Iterator[Candidate]:
    """All ``fit`` candidates, most capable first: for each method (the experiment's, then
    the cheaper ones its registry entry names), for each batch (halving), for last_k
    descending, for eps descending."""
    comp = config.compression
    batch = min(config.batch_size, max_batch or config.batch_size)
    for method in (comp.method, *method_spec(comp.method).cheaper):
        for b in _batches(batch):
            for last_k in range(comp.last_k, 0, -1):
                for eps in _eps_values(config, method):
                    yield _candidate(config, method, last_k, b, eps)


def _wrapped(model: nn.Module, candidate: Candidate) -> nn.Module:
    return wrap_last_layers(copy.deepcopy(model), candidate.method, candidate.last_k,
                            **candidate.wrap_kwargs())


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of gradients plus momentum for the trainable parameters (a lower bound)."""
    return MOMENTUM_SLOTS * sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    )


def measure_candidate(
    config: ExperimentConfig, model: nn.Module, candidate: Candidate,
    probe: tuple[torch.Tensor, torch.Tensor],
) -> int:
    """Measured training bytes of one step of ``candidate`` on the probe batch."""
    wrapped = _wrapped(model, candidate)
    inputs, targets = probe[0][: candidate.batch_size], probe[1][: candidate.batch_size]
    optimizer = trainable_sgd(wrapped, config.lr)
    return measure(wrapped, inputs, targets, nn.CrossEntropyLoss(), optimizer).training_bytes


class Planner:
    """Plans for many devices of one experiment, sharing one measurement cache."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self._cache: dict[Candidate, int] = {}
        self._floor: dict[tuple[str, int], int] = {}

    def record(self, candidate: Candidate, training_bytes: int) -> None:
        """Remember a measurement made elsewhere (the client's own first step)."""
        self._cache[candidate] = training_bytes

    def _measured(self, model: nn.Module, candidate: Candidate,
                  probe: tuple[torch.Tensor, torch.Tensor]) -> int:
        if candidate not in self._cache:
            self._cache[candidate] = measure_candidate(self.config, model, candidate, probe)
        return self._cache[candidate]

    def _grads_floor(self, model: nn.Module, candidate: Candidate) -> int:
        key = (candidate.method, candidate.last_k)
        if key not in self._floor:
            self._floor[key] = trainable_bytes(_wrapped(model, candidate))
        return self._floor[key]

    def plan(
        self, device: DeviceProfile, model: nn.Module,
        probe: tuple[torch.Tensor, torch.Tensor], policy: Policy | None = None,
        verify: bool = True,
    ) -> Plan:
        """The configuration ``device`` trains with (or why it cannot) under ``policy``.

        ``model`` holds the weights to fine-tune (not modified); ``probe`` is an
        (inputs, targets) batch of the client's data, at least as large as any batch tried.
        ``verify``: measure the pick again on this probe (uncached); a caller that measures
        the pick itself passes False and :meth:`record` s what it found.
        """
        policy = policy or self.config.policy
        budget = device.budget_bytes
        max_batch = len(probe[0])
        if policy == "fixed":
            own = own_candidate(self.config, min(self.config.batch_size, max_batch))
            needed = self._measured(model, own, probe)
            fits = needed <= budget
            return Plan(device, policy, own if fits else None, needed,
                        [Option(own, needed, fits)])
        options: list[Option] = []
        for cand in candidates(self.config, max_batch):
            floor = self._grads_floor(model, cand)
            if floor > budget:
                options.append(Option(cand, floor, False, measured=False))
                continue
            needed = self._measured(model, cand, probe)
            if needed <= budget and verify:
                needed = measure_candidate(self.config, model, cand, probe)  # this probe
                self._cache[cand] = needed
            options.append(Option(cand, needed, needed <= budget))
            if needed <= budget:
                return Plan(device, policy, cand, needed, options)
        smallest = min(options, key=lambda o: o.training_bytes)
        return Plan(device, policy, None, smallest.training_bytes, options)
