"""API models. Requests reuse the CLI's schema (``ExperimentConfig``) and the ServerApp's records
(``Event``, ``ClientRecord``, ``RoundResult``); these are the dashboard's own additions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.config import Engine, ExperimentConfig
from common.devices import DeviceProfile
from common.events import RoundResult, RunStatus
from common.record import ClientRecord

# per-client memory quantities a comparison can put on its axis (``<metric>_bytes`` of the
# record); the default, activations kept, is what the compression methods change
MemoryMetric = Literal["activation", "training", "peak_step", "compressed", "peak_forward",
                       "total"]
RUN_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LaunchRequest(BaseModel):
    """How to run an experiment; what runs and where its files go is the server's business."""

    model_config = ConfigDict(extra="forbid")

    engine: Engine = "simulation"


class RunOut(_Out):
    id: str
    experiment_id: int
    experiment_name: str
    engine: Engine
    external: bool = Field(description="events come from a process the dashboard did not start")
    status: RunStatus
    message: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    last_event_id: int = Field(description="id of the newest event; resume the stream after it")


class ExperimentOut(_Out):
    id: int
    name: str
    created_at: float
    config: ExperimentConfig
    runs: list[RunOut]


class RunDetail(BaseModel):
    run: RunOut
    config: ExperimentConfig
    rounds: list[RoundResult]
    clients: list[ClientRecord]


class AttachedRun(BaseModel):
    """A run fed by an outside process: give it ``report_url`` and ``report_token``."""

    run: RunOut
    report_url: str
    report_token: str = Field(description="shown once; only its hash is stored")


class Accepted(BaseModel):
    event_id: int


class RunSummary(BaseModel):
    """One run reduced to what a comparison needs; means are over successful training replies."""

    run_id: str
    experiment_id: int
    experiment_name: str
    status: RunStatus
    method: str
    policy: str
    rounds_done: int
    initial_accuracy: float | None
    final_accuracy: float | None
    best_accuracy: float | None
    activation_bytes_mean: float | None
    training_bytes_mean: float | None
    compressed_bytes_mean: float | None
    peak_step_bytes_mean: float | None
    peak_step_bytes_max: int | None
    peak_forward_bytes_mean: float | None
    total_bytes_mean: float | None
    num_ok: int
    num_oom: int
    num_dropped: int
    num_error: int
    memory_bytes: float | None = Field(description="the compared memory metric")
    pareto: bool = Field(description="no other run has both less memory and more accuracy")


class Comparison(BaseModel):
    memory: MemoryMetric
    runs: list[RunSummary]


class Catalogue(BaseModel):
    profiles: list[DeviceProfile]
    fleets: dict[str, dict[str, int]]


class MethodParam(BaseModel):
    """A parameter of a compression method and the values it accepts."""

    name: str
    rule: str


class MethodInfo(BaseModel):
    """One entry of the method registry (``common.compression.registry``)."""

    name: str
    summary: str
    params: list[MethodParam]
    cheaper: list[str] = Field(description="the planner's fallbacks, in order")


class Info(BaseModel):
    version: str
    auth_required: bool
    max_concurrent_runs: int
    engines: list[Engine]


class Problem(BaseModel):
    """Error body of 401, 404 and 409 replies."""

    detail: str
