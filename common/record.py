"""The per-client record: what one client did in one round, from the device to the database.

One schema, read everywhere by its field names: the ClientApp fills it, ``common.wire`` carries it
in the reply, the ServerApp emits it as the event's ``client``, the dashboard stores it (one column
per field, ``server.dashboard.models``) and serves it in the API and the CSV. "No value" is
``None`` (a method without ``eps``, a failed client's measurements, the cgroup peak in
simulation). Adding a per-client metric: a field here and the line that fills it in the ClientApp
(plus an Alembic revision for the dashboard's table).

The memory account (bytes, all measured by ``common.memory.StepProbe`` on the client's first
training step unless said otherwise):

- ``budget_bytes``: the device's training-memory budget; it constrains ``training_bytes``.
- ``training_bytes = activation_bytes + grad_bytes + optimizer_bytes``: what the budget holds
  (activations kept for backward, gradients of the trainable parameters, optimizer state).
- ``param_bytes``: all parameters (stored anyway); ``transient_bytes``: the forward's temporaries
  on top of what it keeps; ``total_bytes = param + training + transient``.
- ``compressed_bytes``: the paper's metric, bytes the trainable layers store for dW.
- ``peak_forward_bytes`` / ``peak_step_bytes``: the largest number of bytes held at once by
  tensors of the step, during the forward / during the whole step (forward, backward, optimizer
  step), input batch included, parameters excluded.
- ``rss_peak_bytes`` / ``memory_limit_bytes``: the ClientApp process's real peak memory and limit
  from its cgroup (deployment engine, compose fleet); None in simulation.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

ClientStatus = Literal["ok", "oom", "dropped", "error"]
Phase = Literal["train", "evaluate"]
Bytes = int | None
SECONDS_MAX = 1e12  # bound of times in seconds (charts and sums stay finite)


def _bytes(description: str) -> Any:
    return Field(None, ge=0, description=description)


class ClientRecord(BaseModel):
    """One client's outcome in one round; measured, never estimated."""

    model_config = ConfigDict(extra="forbid")

    # the fields Flower averages over a round's replies (weighted by ``num_examples``); every
    # successful reply of a phase sets them, so the replies' metric keys agree
    averaged: ClassVar[tuple[str, ...]] = ("num_examples", "train_loss", "accuracy")

    round: int = Field(ge=0)
    phase: Phase = "train"
    node_id: int
    partition_id: int = Field(ge=0)
    device: str = Field(max_length=100)
    status: ClientStatus
    reason: str = Field("", max_length=2000)
    num_examples: int = Field(0, ge=0)
    train_loss: float | None = None
    accuracy: float | None = Field(None, ge=0, le=1)
    budget_bytes: Bytes = _bytes("the device's training-memory budget (constrains training)")
    training_bytes: Bytes = _bytes("activations kept + gradients + optimizer state")
    activation_bytes: Bytes = _bytes("activations autograd keeps for backward")
    grad_bytes: Bytes = _bytes("gradients of the trainable parameters")
    optimizer_bytes: Bytes = _bytes("optimizer state")
    param_bytes: Bytes = _bytes("all parameters")
    transient_bytes: Bytes = _bytes("forward temporaries on top of the kept activations")
    compressed_bytes: Bytes = _bytes("the paper's metric: bytes the trainable layers keep for dW")
    peak_forward_bytes: Bytes = _bytes("measured peak of the forward")
    peak_step_bytes: Bytes = _bytes("measured peak of the whole step: forward, backward, step")
    total_bytes: Bytes = _bytes("param + training + transient")
    rss_peak_bytes: Bytes = _bytes("the ClientApp's peak memory from its cgroup")
    memory_limit_bytes: Bytes = _bytes("the ClientApp's cgroup memory limit")
    method: str | None = Field(None, max_length=20)
    last_k: int | None = Field(None, ge=0)
    eps: float | None = Field(None, ge=0, le=1)
    ranks: list[list[int]] | None = None
    batch_size: int | None = Field(None, ge=0)
    wall_s: float | None = Field(None, ge=0, le=SECONDS_MAX)
    sim_time_s: float | None = Field(None, ge=0, le=SECONDS_MAX)
