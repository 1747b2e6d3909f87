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
import re

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


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FLOWER_WRAPPED = re.compile(r"<class '([\w.()]+)'>:<'(.*)'>", re.S)  # str(type(ex)):<'str(ex)'>
EXCEPTION_LINE = re.compile(r"([A-Za-z_][\w.]*(?:\([\w.]*\))?)(?::\s*(.*))?")
WRAPPERS = ("ClientAppException", "RayTaskError")  # Flower's and Ray's envelopes of the error
CLIENT_APP_MESSAGE = re.compile(r"Exception ClientAppException occurred\. Message:\s*")
PATH = re.compile(r"(?:/[^/\s'\"():,]+)+/([^/\s'\"():,]+)")
MAX_REASON = 500


def _exception_lines(text: str) -> list[tuple[str, str]]:
    """(type, message) of each exception line of a traceback text: unindented ``Type: message``
    lines that follow an indented frame (``  File ...``), the message's continuation lines
    (up to the next blank line) joined."""
    found: list[tuple[str, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        after_frame = i > 0 and lines[i - 1].startswith(" ")
        match = EXCEPTION_LINE.fullmatch(line.rstrip())
        if after_frame and match and not line.startswith(" "):
            rest = []
            for more in lines[i + 1:]:
                if not more.strip() or more.startswith(" "):
                    break
                rest.append(more.strip())
            found.append((match.group(1), " ".join([match.group(2) or "", *rest]).strip()))
    return found


def readable_reason(reason: str) -> str:
    """One line from a client's error reason: ``Type: message`` of the error itself.

    Flower sends ``<class 'T'>:<'str(ex)'>``; in simulation ``str(ex)`` is Ray's whole chained
    traceback (ANSI-coloured) of the ClientApp's exception wrapped in ``ClientAppException``.
    The last exception line that is not such a wrapper is kept (its type without module path);
    file paths are cut to their file name, whitespace collapsed, the length capped at
    :data:`MAX_REASON` characters. A reason that is already one plain sentence is unchanged."""
    text = ANSI.sub("", reason).strip()
    kind = ""
    if wrapped := FLOWER_WRAPPED.fullmatch(text):
        kind, text = wrapped.group(1), wrapped.group(2).strip()
    errors = [(t, m) for t, m in _exception_lines(text)
              if not any(w in t for w in WRAPPERS)]
    if errors:
        kind, text = errors[-1]
    elif any(w in kind for w in WRAPPERS) and (found := _exception_lines(text)):
        kind, text = "", found[-1][1]
    text = CLIENT_APP_MESSAGE.sub("", text)
    kind = kind.rsplit(".", 1)[-1]
    line = " ".join(PATH.sub(r"\1", f"{kind}: {text}" if kind else text).split())
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 1] + "…"


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
        return ClientResult(**base, status=status, reason=readable_reason(reply.error.reason or ""))
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
