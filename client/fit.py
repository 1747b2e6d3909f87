"""What a node does with ``train`` and ``evaluate`` messages (``client.app`` hands them over).

On a ``train`` message the node resolves its device (node-config ``device`` in deployment, the
seeded fleet assignment in simulation), rolls its availability for the round, asks the planner
for a configuration that fits the budget, wraps the received model with compressed-activation
layers, measures the first training step, fine-tunes and replies with the weights and what it
measured. Every failure a real device would have is an error reply the server records:
``DROPPED`` (offline this round) and ``OOM`` ("out of memory: needs X bytes, budget Y").

Simulated device time of a round:  t = steps * FLOPs(step) / flops + 8 * (down + up) / bandwidth,
with FLOPs(step) the forward and backward FLOPs of the measured first step, and the model's
bytes sent down and up once. The measured first step (``common.memory.StepProbe``: memory and
FLOPs) is the first of the ``local_steps`` training steps, not an extra one.

The learning rate is the server's: the round's config carries ``lr`` and the slice of the cosine
schedule this round covers (``lr-span-start``, ``lr-span-end``; see ``common.train.round_span``).
With ``client_loss: logit-adjusted`` the loss adds the log of this node's class prior to the
logits (``common.train.log_prior``), so its skew does not tilt the global classifier.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader

from client.node import Node, resolve_node
from client.planner import Planner
from client.task import client_dataset, trainable_sgd
from common import wire
from common.compression import layer_ranks, wrap_last_layers
from common.config import ExperimentConfig
from common.data import dataset_spec
from common.devices import load_catalogue
from common.memory import MemoryReport, OutOfBudget, StepProbe, cgroup_memory
from common.record import ClientRecord
from common.runconfig import experiment, settings_of
from common.train import evaluate as evaluate_model
from common.train import initial_model, log_prior
from common.train import train as train_model

MAX_PLANS = 4
_planners: dict[str, Planner] = {}


def _planner(config: ExperimentConfig) -> Planner:
    key = config.model_dump_json()
    if key not in _planners:
        _planners[key] = Planner(config)
    return _planners[key]


def _setup(msg: Message, context: Context) -> tuple[ExperimentConfig, Node, int]:
    settings = settings_of(context.run_config)
    config = experiment(settings.config_json)
    node = resolve_node(config, dict(context.node_config), load_catalogue(settings.devices))
    torch.set_num_threads(max(1, int(node.device.cpus)))  # this process emulates one device
    return config, node, int(msg.content["config"]["server-round"])


def _dropped(msg: Message, node: Node, server_round: int) -> Message:
    reason = (f"dropped: {node.device.name} offline in round {server_round} "
              f"(availability {node.device.availability:.2f})")
    return Message(Error(wire.DROPPED, reason), reply_to=msg)


def _global_model(config: ExperimentConfig, msg: Message) -> nn.Module:
    model = initial_model(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def _schedule(msg: Message, config: ExperimentConfig) -> dict:
    """``train`` keyword arguments for the learning rate the server sent for this round
    (the experiment's ``lr`` and a full cosine if the server sent none)."""
    sent = msg.content["config"]
    return {"lr": float(sent.get("lr", config.lr)),
            "span": (float(sent.get("lr-span-start", 0.0)), float(sent.get("lr-span-end", 1.0)))}


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def train(msg: Message, context: Context) -> Message:
    """Plan, wrap, measure the first step, fine-tune, reply (or fail as the device would)."""
    started = time.perf_counter()
    config, node, server_round = _setup(msg, context)
    if not node.available(config, server_round):
        return _dropped(msg, node, server_round)
    model = _global_model(config, msg)
    data = client_dataset(config, node.partition_id, node.num_partitions)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + server_round)
    probe_batch = next(iter(DataLoader(data, batch_size=config.batch_size, shuffle=True,
                                       generator=generator)))
    planner = _planner(config)
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    schedule = _schedule(msg, config)
    adjustment = None
    if config.client_loss == "logit-adjusted":
        adjustment = log_prior(data.tensors[1], dataset_spec(config.dataset).num_classes)
    for attempt in range(MAX_PLANS):  # a fit pick found over budget is re-planned around
        if attempt:  # the failed first step wrapped and stepped the model
            model = _global_model(config, msg)
        plan = planner.plan(node.device, model, probe_batch, node.policy, verify=False)
        if not plan.fits:
            return Message(Error(wire.OOM, plan.reason), reply_to=msg)
        chosen = plan.chosen
        wrapped = wrap_last_layers(model, chosen.method, chosen.last_k, **chosen.wrap_kwargs())
        loader = DataLoader(data, batch_size=chosen.batch_size, shuffle=True,
                            generator=generator)
        probe = StepProbe(wrapped, node.device.budget_bytes, count_flops=True)
        try:
            stats = train_model(wrapped, loader, trainable_sgd(wrapped, schedule["lr"]),
                                span=schedule["span"], logit_adjustment=adjustment,
                                epochs=config.local_epochs, max_steps=config.local_steps,
                                proximal_mu=mu, probe=probe)
            break
        except OutOfBudget as oom:
            planner.record(chosen, oom.report.training_bytes)
            if node.policy == "fixed" or attempt == MAX_PLANS - 1:
                return Message(Error(wire.OOM, str(oom)), reply_to=msg)
    report = stats.first_step
    planner.record(chosen, report.training_bytes)
    model_bytes = _model_bytes(model)
    sim_time = node.device.device_seconds(probe.flops * stats.steps, model_bytes, model_bytes)
    peak, limit = cgroup_memory() if _deployed(context) else (None, None)
    record = ClientRecord(
        round=server_round, phase="train", node_id=context.node_id,
        partition_id=node.partition_id, device=node.device.name, status="ok",
        num_examples=stats.examples, train_loss=stats.loss,
        accuracy=stats.accuracy,  # local: over the examples trained on
        budget_bytes=node.device.budget_bytes, **_measured(report),
        rss_peak_bytes=peak, memory_limit_bytes=limit,
        method=chosen.method, last_k=chosen.last_k, eps=chosen.eps,
        ranks=layer_ranks(wrapped), batch_size=chosen.batch_size,
        wall_s=time.perf_counter() - started, sim_time_s=sim_time,
    )
    # wrapping keeps the state-dict keys
    return _reply(msg, record, arrays=ArrayRecord(wrapped.state_dict()))


def _deployed(context: Context) -> bool:
    """A node of a deployment fleet (its node-config names its device): a process of its own,
    whose cgroup (compose container, ``edgefed`` node group) holds this ClientApp alone."""
    return "device" in context.node_config


def _measured(report: MemoryReport) -> dict[str, int]:
    """The record's fields that the measured first step reports (its memory account)."""
    return {name: value for name, value in report.model_dump(exclude={"batch_size"}).items()
            if name in ClientRecord.model_fields}


def _reply(msg: Message, record: ClientRecord, **content: ArrayRecord) -> Message:
    metrics, fields = wire.encode(record)
    return Message(RecordDict({**content, "metrics": MetricRecord(metrics),
                               "record": ConfigRecord(fields)}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the global model on this node's local data, as an evaluate record."""
    config, node, server_round = _setup(msg, context)
    if not node.available(config, server_round):
        return _dropped(msg, node, server_round)
    model = _global_model(config, msg)
    data = client_dataset(config, node.partition_id, node.num_partitions)
    _, accuracy = evaluate_model(model, DataLoader(data, batch_size=config.batch_size))
    return _reply(msg, ClientRecord(
        round=server_round, phase="evaluate", node_id=context.node_id,
        partition_id=node.partition_id, device=node.device.name, status="ok",
        num_examples=len(data), accuracy=accuracy))
