"""Experiment configuration: one pydantic schema for the CLI, the dashboard API and Flower.

An experiment is validated once and then travels as JSON (``ExperimentConfig.
model_dump_json()``) into Flower's run-config (key ``config-json``) and the dashboard's database.
The schema is strict (no coercion: ``lr: true`` or ``local_steps: '3'`` are refused, and so are
NaN and infinities). Checks that need more than the schema (device names against the catalogue,
``compression.last_k`` against the model's layers) and the reading of files are in
:mod:`common.validate`, the one path the CLI, the dashboard API and its form share; it reports
every problem as a :class:`Problem` of a :class:`ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from common.compression.registry import DEFAULT_EPS, DEFAULT_RADIUS, METHODS, RADII, method_spec
from common.datasets import SPECS

Method = Literal[METHODS]  # the registry's names, in its order
ModelName = Literal["mobilenetv2", "resnet18", "resnet34", "mcunet", "smallcnn"]
DatasetName = Literal[tuple(SPECS)]  # the data sets of common.datasets
Partitioner = Literal["iid", "dirichlet", "pathological"]
StrategyName = Literal["fedavg", "fedprox", "fedadam"]
Policy = Literal["fixed", "fit"]
Engine = Literal["simulation", "deployment"]
ClientLoss = Literal["cross-entropy", "logit-adjusted"]
LrSchedule = Literal["per-round", "across-rounds"]

MAX_CLIENTS = 2000
MAX_ROUNDS = 500
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\- ]+$")]
DEFER_CROSS_CHECKS = "defer_cross_checks"  # validation-context key: see ExperimentConfig


class Problem(NamedTuple):
    """One thing wrong with a config: ``field`` dotted (``compression.last_k``,
    ``fleet.0.device``; empty for the file as a whole) and the ``reason`` in words."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ConfigError(ValueError):
    """A refused config with every problem found; ``str()`` is one problem per line.

    ``source`` names what was read (a file, ``body``), or is empty.
    """

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(map(str, self.problems)))


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a config must not silently fall back to a default.
    No coercion (a string is not a number, a boolean is not a float) and only finite floats."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CompressionConfig(_Strict):
    """How a client keeps activations for backward (see ``common.compression.registry``).

    The parameter fields are shared by the methods; each method uses those its registry entry
    takes (:meth:`wrap_params`). ``rank`` has no default: given for a method that takes no
    rank, it is an error rather than ignored.
    """

    method: Method = "hosvd"
    last_k: int = Field(
        4, ge=1, le=64, description="number of trailing Conv2d/Linear layers fine-tuned"
    )
    eps: float = Field(DEFAULT_EPS, gt=0.0, le=1.0,
                       description="explained-variance threshold (svd, hosvd, asi)")
    rank: int | None = Field(None, ge=1, le=4096, description="fixed rank per mode (asi, hosvd)")
    radius: Literal[RADII] = Field(DEFAULT_RADIUS, description="patch radius R (gradfilter)")

    @field_validator("rank")
    @classmethod
    def _rank_is_taken(cls, rank: int | None, info: ValidationInfo) -> int | None:
        method = info.data.get("method")  # absent when the method itself was refused
        if rank is not None and method is not None and not method_spec(method).takes("rank"):
            takes = ", ".join(method_spec(method).param_names) or "nothing"
            raise ValueError(f"method {method!r} takes no rank (it takes: {takes})")
        return rank

    def wrap_params(self) -> dict[str, float | int]:
        """The ``wrap_last_layers`` keyword arguments of this setting: the parameters the
        method takes (a ``rank`` replaces ``eps``)."""
        return method_spec(self.method).choose(self.model_dump())

    def tag(self) -> str:
        """Short name: method, layers and its own parameters (``hosvd-k4-eps0.8``)."""
        own = method_spec(self.method).tag(self.wrap_params())
        return "-".join(part for part in (self.method, f"k{self.last_k}", own) if part)


class FleetEntry(_Strict):
    """``count`` devices of catalogue profile ``device``."""

    device: Name
    count: int = Field(ge=1, le=MAX_CLIENTS)
    policy: Policy | None = Field(None, description="overrides the experiment's policy")


class ExperimentConfig(_Strict):
    """A whole federated fine-tuning experiment (the paper's Setup B on a fleet of devices)."""

    name: Name = "experiment"
    model: ModelName = "mobilenetv2"
    width: float = Field(0.5, gt=0.0, le=2.0, description="MobileNetV2 width multiplier")
    dataset: DatasetName = "fashion-mnist"
    image_size: int = Field(32, ge=28, le=224)
    partitioner: Partitioner = "dirichlet"
    alpha: float = Field(0.5, gt=0.0, le=1000.0, description="Dirichlet concentration")
    classes_per_client: int = Field(2, ge=1, le=100, description="pathological partitioner")
    fleet: list[FleetEntry] = Field(min_length=1, max_length=64)
    rounds: int = Field(5, ge=1, le=MAX_ROUNDS)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    fraction_evaluate: float = Field(
        0.0, ge=0.0, le=1.0, description="fraction of clients evaluating on local data"
    )
    min_train_clients: int = Field(2, ge=1, le=MAX_CLIENTS)
    strategy: StrategyName = "fedavg"
    proximal_mu: float = Field(0.01, ge=0.0, le=10.0, description="FedProx")
    server_lr: float = Field(0.01, gt=0.0, le=10.0, description="FedAdam eta")
    local_epochs: int = Field(1, ge=1, le=50)
    local_steps: int | None = Field(None, ge=1, le=100_000, description="cap on local steps")
    batch_size: int = Field(32, ge=1, le=1024)
    lr: float = Field(0.05, gt=0.0, le=10.0, description="peak client learning rate")
    lr_schedule: LrSchedule = Field(
        "across-rounds",
        description="cosine decay of the client lr: over all rounds (the server sends each "
        "round its slice) or restarted in every round",
    )
    client_loss: ClientLoss = Field(
        "logit-adjusted",
        description="client training loss; logit-adjusted adds log(local class prior) to the "
        "logits, so skewed local data does not tilt the global classifier",
    )
    compression: CompressionConfig = CompressionConfig()
    policy: Policy = "fit"
    round_timeout_s: float = Field(
        600.0, ge=10.0, le=86_400.0,
        description="how long the server waits for replies (inventory, each round); a node "
        "that has not answered by then is recorded as failed",
    )
    pretrain_epochs: int = Field(
        5, ge=0, le=100, description="Setup-B pretraining epochs on the server half"
    )
    pretrain_samples: int | None = Field(
        None, ge=1, le=1_000_000,
        description="cap on the server-half samples pretraining uses (seeded); none: all",
    )
    samples_per_client: int | None = Field(None, ge=1, le=1_000_000, description="cap per client")
    test_samples: int | None = Field(None, ge=1, le=1_000_000, description="cap on the test set")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @property
    def num_clients(self) -> int:
        return sum(entry.count for entry in self.fleet)

    def cross_problems(self) -> list[tuple[Problem, tuple[str, ...]]]:
        """Checks between fields: each problem found with the fields its check reads."""
        found = []
        if self.num_clients > MAX_CLIENTS:
            found.append((Problem("fleet", f"{self.num_clients} clients, at most {MAX_CLIENTS} "
                                  "allowed"), ("fleet",)))
        if self.min_train_clients > self.num_clients:
            found.append((Problem("min_train_clients", f"{self.min_train_clients} exceeds the "
                                  f"fleet's {self.num_clients} clients"),
                          ("min_train_clients", "fleet")))
        num_classes = SPECS[self.dataset].num_classes
        if self.partitioner == "pathological" and self.classes_per_client > num_classes:
            found.append((Problem("classes_per_client", f"{self.classes_per_client} exceeds the "
                                  f"{num_classes} classes of {self.dataset}"),
                          ("classes_per_client", "partitioner", "dataset")))
        return found

    @model_validator(mode="after")
    def _check_across_fields(self, info: ValidationInfo) -> ExperimentConfig:
        """Refuse what :meth:`cross_problems` finds, unless the validation context sets
        :data:`DEFER_CROSS_CHECKS` (``common.validate`` then reports them field by field)."""
        if not (info.context or {}).get(DEFER_CROSS_CHECKS):
            problems = [problem for problem, _ in self.cross_problems()]
            if problems:
                raise ValueError("; ".join(map(str, problems)))
        return self

    def policy_of(self, entry: FleetEntry) -> Policy:
        """The policy a fleet entry's devices follow."""
        return entry.policy or self.policy


class SweepConfig(_Strict):
    """A grid of experiments: ``base`` with every combination of the ``methods`` and
    ``fleets`` (one fleet per budget class) — the data of a memory-vs-accuracy Pareto chart."""

    base: dict
    methods: list[CompressionConfig] = Field(min_length=1, max_length=16)
    fleets: dict[Name, list[FleetEntry]] = Field(min_length=1, max_length=16)

    def combinations(self) -> list[tuple[int, str, dict]]:
        """``(method index, fleet name, experiment fields)`` per (method, fleet), the experiment
        named ``<base>-<method>-<fleet>``; the fields are checked by ``common.validate``."""
        name = self.base.get("name", "sweep")
        return [
            (i, fleet_name, {
                **self.base, "name": f"{name}-{method.tag()}-{fleet_name}",
                "compression": method.model_dump(), "fleet": [e.model_dump() for e in fleet],
            })
            for i, method in enumerate(self.methods)
            for fleet_name, fleet in self.fleets.items()
        ]


