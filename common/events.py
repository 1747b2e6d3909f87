"""Records a run emits: per-client results, per-round global metrics, run state changes.

The ServerApp appends each event as one JSON line to ``<out_dir>/events.jsonl`` and POSTs it to
the dashboard's ingestion endpoint; the dashboard stores and streams the same records. One schema
on both sides of the wire.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ClientStatus = Literal["ok", "oom", "dropped", "error"]
SECONDS_MAX = 1e12  # bound of times in seconds (charts and sums stay finite)
RunStatus = Literal["queued", "running", "finished", "failed", "cancelled", "interrupted"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientResult(_Record):
    """What one client did in one round: measured, never estimated (bytes from common.memory)."""

    round: int = Field(ge=0)
    phase: Literal["train", "evaluate"] = "train"
    node_id: int
    partition_id: int = Field(ge=0)
    device: str = Field(max_length=100)
    status: ClientStatus
    reason: str = Field("", max_length=2000)
    num_examples: int = Field(0, ge=0)
    train_loss: float | None = None
    accuracy: float | None = Field(None, ge=0, le=1)
    activation_bytes: int | None = Field(None, ge=0)
    compressed_bytes: int | None = Field(None, ge=0)
    peak_bytes: int | None = Field(None, ge=0)
    total_bytes: int | None = Field(None, ge=0)
    budget_bytes: int | None = Field(None, ge=0)
    method: str | None = Field(None, max_length=20)
    last_k: int | None = Field(None, ge=0)
    eps: float | None = Field(None, ge=0, le=1)
    ranks: list[list[int]] | None = None
    batch_size: int | None = Field(None, ge=0)
    wall_s: float | None = Field(None, ge=0, le=SECONDS_MAX)
    sim_time_s: float | None = Field(None, ge=0, le=SECONDS_MAX)


class RoundResult(_Record):
    """Global metrics after aggregation; round 0 is the pretrained starting point."""

    round: int = Field(ge=0)
    accuracy: float = Field(ge=0, le=1)
    loss: float
    num_ok: int = Field(0, ge=0)
    num_failed: int = Field(0, ge=0)


class RunState(_Record):
    status: RunStatus
    message: str = Field("", max_length=4000)


class Event(_Record):
    """Envelope: exactly one of ``client``, ``round`` or ``state`` is set."""

    run_id: str = Field(max_length=64)
    ts: float = Field(default_factory=time.time, ge=0, le=SECONDS_MAX)
    client: ClientResult | None = None
    round: RoundResult | None = None
    state: RunState | None = None
