"""The wire format of a client's answer, shared by the ClientApp (writes) and ServerApp (reads).

A successful train reply holds exactly one ArrayRecord (``arrays``), one MetricRecord
(``metrics``: numbers only, the same keys from every client so Flower's weighted averaging works)
and one ConfigRecord (``plan``: the device and the chosen configuration, strings). A client that
cannot train answers with an ``Error`` whose code says why (:data:`OOM`, :data:`DROPPED`) and
whose reason is a sentence. Identity (partition id, device) of every node is answered to a
``query`` message, so the server can name nodes that fail.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Message, MetricRecord

from common.events import ClientResult, ClientStatus

OOM = 1001  # Flower's own codes are 0..8
DROPPED = 1002
STATUS_OF_CODE: dict[int, ClientStatus] = {OOM: "oom", DROPPED: "dropped"}

# MetricRecord key -> ClientResult field (numbers)
METRIC_FIELDS = {
    "num-examples": "num_examples",
    "train-loss": "train_loss",
    "accuracy": "accuracy",
    "activation-bytes": "activation_bytes",
    "compressed-bytes": "compressed_bytes",
    "peak-bytes": "peak_bytes",
    "total-bytes": "total_bytes",
    "budget-bytes": "budget_bytes",
    "last-k": "last_k",
    "eps": "eps",
    "batch-size": "batch_size",
    "wall-s": "wall_s",
    "sim-time-s": "sim_time_s",
}
INT_FIELDS = {"num_examples", "activation_bytes", "compressed_bytes", "peak_bytes",
              "total_bytes", "budget_bytes", "last_k", "batch_size"}


def identity_record(partition_id: int, device: str, budget_bytes: int) -> ConfigRecord:
    """A node's answer to the server's inventory query."""
    return ConfigRecord({"partition-id": partition_id, "device": device,
                         "budget-bytes": budget_bytes})


def plan_record(device: str, method: str, ranks: list[list[int]]) -> ConfigRecord:
    return ConfigRecord({"device": device, "method": method, "ranks": json.dumps(ranks)})


def client_result(
    reply: Message, phase: str, server_round: int, identity: tuple[int, str]
) -> ClientResult:
    """A reply (content or error) as a :class:`ClientResult`; ``identity`` is the sending node's
    (partition id, device) as the server's node directory knows it."""
    node_id = reply.metadata.src_node_id
    partition_id, device = identity
    base = {"round": server_round, "phase": phase, "node_id": node_id,
            "partition_id": partition_id, "device": device}
    if reply.has_error():
        status = STATUS_OF_CODE.get(reply.error.code, "error")
        return ClientResult(**base, status=status, reason=(reply.error.reason or "")[:2000])
    metrics: MetricRecord = reply.content["metrics"]
    fields: dict[str, object] = {}
    for key, name in METRIC_FIELDS.items():
        if key in metrics:
            value = metrics[key]
            fields[name] = int(value) if name in INT_FIELDS else float(value)
    if fields.get("eps", 0.0) < 0:  # -1 marks a method without eps
        fields["eps"] = None
    plan = reply.content.config_records.get("plan")
    if plan is not None:
        fields["device"] = str(plan["device"])
        fields["method"] = str(plan["method"])
        fields["ranks"] = json.loads(str(plan["ranks"]))
    return ClientResult(**{**base, **fields}, status="ok")
