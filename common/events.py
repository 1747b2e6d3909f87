"""Records a run emits: per-client records (``common.record``), per-round global metrics, run
state changes.

The ServerApp appends each event as one JSON line to ``<out_dir>/events.jsonl`` and POSTs it to
the dashboard's ingestion endpoint; the dashboard stores and streams the same records. One schema
on both sides of the wire.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.record import SECONDS_MAX, ClientRecord

RunStatus = Literal["queued", "running", "finished", "failed", "cancelled", "interrupted"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    client: ClientRecord | None = None
    round: RoundResult | None = None
    state: RunState | None = None
