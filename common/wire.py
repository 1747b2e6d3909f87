"""The wire format of a client's answer, shared by the ClientApp (writes) and ServerApp (reads).

Plain dictionaries, wrapped in Flower records by the apps (``common`` imports no Flower):

- a successful reply holds the weights (``arrays``), a MetricRecord ``metrics`` and a
  ConfigRecord ``record``, both generated from :class:`~common.record.ClientRecord`'s fields:
  ``metrics`` holds the fields Flower averages (``ClientRecord.averaged``, the same keys in every
  reply of a phase), ``record`` every other field that has a value, as JSON text. A field's key
  is its name with ``-`` for ``_`` (Flower weights averages by ``num-examples``); a field without
  a value is absent and reads back as ``None``.
- a client that cannot train answers with a Flower ``Error`` whose code says why (:data:`OOM`,
  :data:`DROPPED`) and whose reason is a sentence: :func:`failed` makes its record.
- a node's identity (partition id, device, budget) answers the server's inventory query.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from common.reasons import readable_reason
from common.record import ClientRecord, ClientStatus, Phase

OOM = 1001  # Flower's own codes are 0..8
DROPPED = 1002
UNREADABLE = 1003  # the server's: a reply whose content is not a valid record
STATUS_OF_CODE: dict[int, ClientStatus] = {OOM: "oom", DROPPED: "dropped"}

Number = int | float


def key(field: str) -> str:
    """The reply key of a record field: ``num_examples`` -> ``num-examples``."""
    return field.replace("_", "-")


def field(key: str) -> str:
    """The record field of a reply key: ``num-examples`` -> ``num_examples``."""
    return key.replace("-", "_")


def encode(record: ClientRecord) -> tuple[dict[str, Number], dict[str, str]]:
    """(metrics, record) contents of a reply carrying ``record``."""
    values = record.model_dump(exclude_none=True)
    metrics = {key(f): values.pop(f) for f in ClientRecord.averaged if f in values}
    return metrics, {key(f): json.dumps(v) for f, v in values.items()}


def decode(metrics: Mapping[str, Number], fields: Mapping[str, str], **envelope: object
           ) -> ClientRecord:
    """The record a reply carries; ``envelope`` (round, phase, node id: what the server knows
    itself) replaces what the reply says about them. Unknown keys are an error."""
    values = {field(k): json.loads(str(v)) for k, v in fields.items()}
    values.update({field(k): v for k, v in metrics.items()})
    return ClientRecord.model_validate({**values, **envelope})


def failed(code: int, reason: str, partition_id: int, device: str, *, round: int, phase: Phase,
           node_id: int) -> ClientRecord:
    """The record of a failed client: status ``oom`` or ``dropped`` by ``code``, else ``error``;
    the reason in one line (:func:`common.reasons.readable_reason`)."""
    return ClientRecord(round=round, phase=phase, node_id=node_id, partition_id=partition_id,
                        device=device, status=STATUS_OF_CODE.get(code, "error"),
                        reason=readable_reason(reason))


def identity(partition_id: int, device: str, budget_bytes: int) -> dict[str, int | str]:
    """A node's answer to the server's inventory query."""
    return {"partition-id": partition_id, "device": device, "budget-bytes": budget_bytes}
