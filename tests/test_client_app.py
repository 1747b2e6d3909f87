"""The ClientApp's handlers called directly, as a SuperNode would call them: a `fit` pick that
the measured first step finds over budget is re-planned; a `fixed` device over budget answers
with an out-of-memory error; the inventory is answered without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from torch.utils.data import DataLoader

import client.app as client_app
from client import fit
from client.planner import own_candidate, trainable_bytes
from client.task import client_dataset, trainable_sgd
from common import wire
from common.compression import wrap_last_layers
from common.config import ExperimentConfig
from common.devices import catalogue_path
from common.memory import measure
from common.train import initial_model
from tests.dashboard_support import REPO, tiny_config

pytestmark = pytest.mark.usefixtures("task_identity")


def _config(policy: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(tiny_config(
        name=f"client-app-{policy}", fleet=[{"device": "rpi5", "count": 2}], policy=policy,
        compression={"method": "hosvd", "last_k": 2, "eps": 0.9}, samples_per_client=32,
        local_steps=2))


def _catalogue(tmp_path: Path, budget_bytes: int) -> str:
    """The project's catalogue with rpi5's training-memory budget set to ``budget_bytes``."""
    data = yaml.safe_load(catalogue_path().read_text())
    data["profiles"]["rpi5"]["budget_bytes"] = budget_bytes
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _train(config: ExperimentConfig, devices: str, **sent: float) -> Message:
    arrays = ArrayRecord(initial_model(config).state_dict())
    round_config = ConfigRecord({"server-round": 1, **sent})
    message = Message(RecordDict({"arrays": arrays, "config": round_config}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
    run_config = {"config-json": config.model_dump_json(), "devices": devices}
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=run_config)
    return client_app.train(message, context)


def _own_bytes(config: ExperimentConfig) -> tuple[int, int]:
    """Measured training bytes of the experiment's own configuration on partition 0, and the
    part of them that gradients and momentum take (the planner's floor)."""
    model = wrap_last_layers(initial_model(config), "hosvd", 2, eps=0.9)
    batch = next(iter(DataLoader(client_dataset(config, 0, 2), batch_size=config.batch_size)))
    report = measure(model, *batch, torch.nn.CrossEntropyLoss(), trainable_sgd(model, config.lr))
    return report.training_bytes, trainable_bytes(model)


def test_a_fit_pick_found_over_budget_is_replanned(tmp_path: Path) -> None:
    config = _config("fit")
    needed, floor = _own_bytes(config)
    budget = (needed + floor) // 2  # the own choice cannot fit, yet is worth a measurement
    devices = _catalogue(tmp_path, budget)
    own = own_candidate(config)
    fit._planner(config).record(own, 1)  # a wrong cached figure: the planner picks it
    reply = _train(config, devices)
    assert not reply.has_error(), reply.error
    record = wire.decode(reply.content["metrics"], reply.content["record"])
    assert (record.last_k, record.batch_size, record.eps) != (own.last_k, own.batch_size,
                                                              own.eps)
    assert fit._planner(config)._cache[own] > budget  # the step's real figure
    assert record.budget_bytes == budget and record.training_bytes <= budget
    assert record.status == "ok" and record.device == "rpi5" and record.partition_id == 0
    assert record.rss_peak_bytes is None  # simulation: no cgroup of its own


def test_a_fixed_device_over_budget_answers_out_of_memory(tmp_path: Path) -> None:
    config = _config("fixed")
    reply = _train(config, _catalogue(tmp_path, 1024))
    assert reply.has_error() and reply.error.code == wire.OOM
    assert reply.error.reason.startswith("out of memory: needs ")
    assert reply.error.reason.endswith(" bytes, budget 1024")


def test_the_client_follows_the_learning_rate_the_server_sends() -> None:
    """The update's size follows the server's ``lr`` and cosine slice, not the config's lr."""
    config = _config("fixed")
    devices = str(catalogue_path())
    start = torch.cat([t.flatten() for t in initial_model(config).state_dict().values()])

    def moved(**sent: float) -> float:
        reply = _train(config, devices, **sent)
        assert not reply.has_error()
        weights = reply.content["arrays"].to_torch_state_dict().values()
        return (torch.cat([t.flatten() for t in weights]) - start).norm().item()

    assert moved(**{"lr": 1e-9}) < 1e-6
    assert moved(**{"lr": 0.5, "lr-span-start": 1.0, "lr-span-end": 1.0}) < 1e-6  # cosine end
    assert moved(**{"lr": 0.5}) > 1e-3


def test_the_app_answers_the_inventory_without_torch():
    """A node whose limit cannot hold torch (pi-starved, 150 MiB) still says who it is: the
    app module and its query handler load no torch (``train`` does)."""
    config = ExperimentConfig.model_validate(tiny_config(
        fleet=[{"device": "pi-starved", "count": 2}]))
    probe = f"""
import sys
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
import client.app
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
context = Context(run_id=1, node_id=1, node_config={{"partition-id": 1, "num-partitions": 2}},
                  state=RecordDict(), run_config={{"config-json": {config.model_dump_json()!r},
                                                  "devices": ""}})
query = Message(RecordDict(), dst_node_id=1, message_type=MessageType.QUERY)
print(dict(client.app.identify(query, context).content["identity"]), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO, timeout=120,
                         capture_output=True, text=True).stdout
    assert "'device': 'pi-starved'" in out and "'partition-id': 1" in out, out
    assert out.rstrip().endswith("False"), f"answering the inventory imported torch: {out}"
