"""The per-client record on the wire: generated from the schema, read back unchanged, "no value"
is None (no sentinel), replies of one phase have the same metric keys whatever the method, and
the ServerApp turns any reply (content, error, unreadable content) into a record."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import wire
from common.reasons import MAX_REASON
from common.record import ClientRecord
from server.app import client_record


def _record(**fields: object) -> ClientRecord:
    base = {"round": 2, "node_id": 2**64 - 1, "partition_id": 3, "device": "rpi5",
            "status": "ok", "num_examples": 32, "train_loss": 0.5, "accuracy": 0.75}
    return ClientRecord(**{**base, **fields})


HOSVD = _record(method="hosvd", eps=0.8, last_k=4, ranks=[[2, 3, 4, 4], [1, 1]],
                budget_bytes=4 * 2**20, training_bytes=3_000_000, peak_step_bytes=2**40)
VANILLA = _record(method="vanilla", last_k=4, training_bytes=4_000_000)


def test_encode_decode_round_trip_keeps_every_field() -> None:
    for record in (HOSVD, VANILLA):
        metrics, fields = wire.encode(record)
        assert wire.decode(metrics, fields) == record
    assert VANILLA.eps is None and wire.decode(*wire.encode(VANILLA)).eps is None


def test_keys_come_from_the_schema_and_none_is_absent() -> None:
    metrics, fields = wire.encode(VANILLA)
    assert set(metrics) == {"num-examples", "train-loss", "accuracy"}  # Flower averages these
    assert "eps" not in fields and "rss-peak-bytes" not in fields  # no value, no key
    assert fields["training-bytes"] == "4000000" and fields["method"] == '"vanilla"'
    keys = set(metrics) | set(fields)
    assert {wire.field(k) for k in keys} <= set(ClientRecord.model_fields)
    # replies of one phase agree on their metric keys, whatever the method chose
    assert set(wire.encode(HOSVD)[0]) == set(metrics)


def test_decode_takes_the_envelope_from_the_server_and_rejects_unknown_keys() -> None:
    metrics, fields = wire.encode(HOSVD)
    record = wire.decode(metrics, fields, round=5, phase="evaluate", node_id=9)
    assert (record.round, record.phase, record.node_id) == (5, "evaluate", 9)
    with pytest.raises(ValueError, match="peak_bytes"):
        wire.decode(metrics, {**fields, "peak-bytes": "1"})


def test_failed_records_name_their_status() -> None:
    envelope = {"round": 1, "phase": "train", "node_id": 4}
    assert wire.failed(wire.OOM, "out of memory", 0, "mcu", **envelope).status == "oom"
    assert wire.failed(wire.DROPPED, "offline", 0, "mcu", **envelope).status == "dropped"
    record = wire.failed(7, "x" * 5000, 0, "mcu", **envelope)
    assert record.status == "error" and len(record.reason) == MAX_REASON
    assert record.training_bytes is None and record.budget_bytes is None


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Messages take their run id from the process's task identity."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _reply(content: RecordDict | Error, src: int = 11) -> Message:
    sent = Message(RecordDict(), dst_node_id=src, message_type=MessageType.TRAIN)
    return Message(content, reply_to=sent)  # from the node the message went to


def test_server_reads_content_errors_and_unreadable_replies(task_identity: None) -> None:
    metrics, fields = wire.encode(HOSVD)
    content = RecordDict({"metrics": MetricRecord(metrics), "record": ConfigRecord(fields)})
    record = client_record(_reply(content), "train", 7, (0, "unknown"))
    assert record == HOSVD.model_copy(update={"round": 7, "node_id": 11})

    oom = client_record(_reply(Error(wire.OOM, "out of memory: needs 9 bytes, budget 8")),
                        "train", 7, (3, "mcu"))
    assert (oom.status, oom.partition_id, oom.device, oom.node_id) == ("oom", 3, "mcu", 11)

    broken = RecordDict({"metrics": MetricRecord(metrics),
                         "record": ConfigRecord({**fields, "eps": "not json"})})
    unreadable = client_record(_reply(broken), "train", 7, (3, "rpi5"))
    assert unreadable.status == "error" and unreadable.reason.startswith("unreadable reply")
    missing = client_record(_reply(RecordDict({"metrics": MetricRecord(metrics)})), "train", 7,
                            (3, "rpi5"))
    assert missing.status == "error" and missing.device == "rpi5"
