"""edgefed's Flower ServerApp: Setup-B pretraining, then federated fine-tuning with events.

1. Pretrain (or load the cached checkpoint of) the model on the server's Setup-B half.
2. Wait until every node of the fleet has registered, then ask each who it is (partition id,
   device) with a ``query`` message; nodes that cannot answer get the fleet's remaining
   partitions by elimination, so failures can be named.
3. Run FedAvg / FedProx / FedAdam from ``flwr.serverapp.strategy``; every reply, and every
   sampled node that did not reply, becomes a ClientRecord event; after aggregation the global
   model is evaluated on the test set (round 0 = the pretrained model) as a RoundResult event.
   Each round's train config carries the client learning rate and the slice of its cosine
   schedule (:func:`round_config`), which clients follow.

A client failure never stops the run: error replies are recorded and left out of aggregation.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx
from torch.utils.data import DataLoader

from client.task import partitions
from common import wire
from common.config import ExperimentConfig
from common.devices import assign_entries
from common.events import RoundResult, RunState
from common.record import ClientRecord
from common.runconfig import experiment, settings_of
from common.train import evaluate as evaluate_model
from common.train import round_span
from server import fleet
from server.grid import WatchfulGrid
from server.report import Reporter
from server.task import pretrained_model, test_dataset

NODE_WAIT_S = 600.0
ERRORS_LOG = "client-errors.log"  # full text of the client errors events show in one line
STATUS_EVERY_S = 5.0

log = logging.getLogger(__name__)
app = ServerApp()


class StatusLine:
    """What the run is doing between events, as throttled ``running`` state events (at most one
    per ``every_s`` unless forced): pretraining steps, node registration, each round's start.
    The dashboard shows the latest as the run's message."""

    def __init__(self, reporter: Reporter, every_s: float = STATUS_EVERY_S) -> None:
        self.reporter = reporter
        self.every_s = every_s
        self._last = -math.inf

    def __call__(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self.reporter.emit(state=RunState(status="running", message=message))

    def pretrain_step(self, step: int, total: int, loss: float) -> None:
        self(f"pretraining on the server's half: step {step}/{total}, loss {loss:.3f}")


def wait_for_nodes(grid: Grid, expected: int, timeout: float = NODE_WAIT_S,
                   status: StatusLine | None = None) -> list[int]:
    """Poll ``grid.get_node_ids()`` until ``expected`` nodes registered (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected and time.monotonic() < deadline:
        if status is not None:
            status(f"waiting for nodes: {len(nodes)} of {expected} registered")
        time.sleep(0.5)
    if len(nodes) < expected:
        log.warning("only %d of %d nodes registered after %.0f s", len(nodes), expected, timeout)
    return nodes


class NodeDirectory:
    """Node id -> (partition id, device), from the nodes' answers to an inventory query.

    A node that never answered (e.g. its ClientApp cannot start under its memory cap) gets the
    lowest partition id nobody claimed and that partition's device in the one assignment every
    fleet is numbered by (``common.devices.assign_entries`` of the experiment's fleet). An
    answer that disagrees with the assignment (a fleet built for another mix) is logged.
    """

    def __init__(self, config: ExperimentConfig, answers: dict[int, tuple[int, str]]) -> None:
        self.entries = assign_entries(config.fleet)
        self.known = dict(answers)
        for node_id, (pid, device) in sorted(answers.items()):
            if device != self._device_of(pid):
                log.warning("node %d answers partition %d is %s; the experiment's fleet has "
                            "%s there", node_id, pid, device, self._device_of(pid))

    @classmethod
    def ask(cls, grid: Grid, config: ExperimentConfig, nodes: list[int]) -> NodeDirectory:
        messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                    for n in nodes]
        answers = {}
        for reply in grid.send_and_receive(messages, timeout=config.round_timeout_s):
            if not reply.has_error():
                identity = reply.content["identity"]
                answers[reply.metadata.src_node_id] = (int(identity["partition-id"]),
                                                       str(identity["device"]))
        return cls(config, answers)

    def identity(self, node_id: int) -> tuple[int, str]:
        """The node's (partition id, device); for a node that never answered, as the class
        docstring says (remembered, so it keeps the same identity every round)."""
        if node_id not in self.known:
            taken = {pid for pid, _ in self.known.values()}
            pid = next(i for i in range(len(self.entries) + len(self.known) + 1)
                       if i not in taken)
            self.known[node_id] = (pid, self._device_of(pid))
        return self.known[node_id]

    def _device_of(self, pid: int) -> str:
        """The assignment's device of partition ``pid`` ("unknown" past the fleet's end)."""
        return self.entries[pid].device if pid < len(self.entries) else "unknown"


def client_record(reply: Message, phase: str, server_round: int, identity: tuple[int, str]
                  ) -> ClientRecord:
    """A reply (content or error) as its :class:`ClientRecord`; round, phase and node id are the
    server's. ``identity`` (partition id, device, as the node directory knows the sender) names
    a node whose reply carries no record: an error, or content that is not a valid record."""
    envelope = {"round": server_round, "phase": phase, "node_id": reply.metadata.src_node_id}
    if reply.has_error():
        return wire.failed(reply.error.code, reply.error.reason or "", *identity, **envelope)
    try:
        return wire.decode(reply.content["metrics"], reply.content.config_records["record"],
                           **envelope)
    except (KeyError, ValueError) as err:  # invalid JSON or record: ValueError
        return wire.failed(wire.UNREADABLE, f"unreadable reply: {err}", *identity, **envelope)


def round_config(config: ExperimentConfig, server_round: int) -> dict[str, float]:
    """What round ``server_round``'s train messages tell clients about the learning rate:
    ``lr`` and the slice [``lr-span-start``, ``lr-span-end``] of the cosine schedule
    (``common.train.round_span`` of the experiment's ``lr_schedule``)."""
    start, end = round_span(config.lr_schedule, server_round, config.rounds)
    return {"lr": config.lr, "lr-span-start": start, "lr-span-end": end}


class Reporting:
    """Strategy mixin: report every sampled node's outcome before the strategy aggregates."""

    reporter: Reporter
    directory: NodeDirectory
    num_ok: int = 0
    num_failed: int = 0

    def attach(self, reporter: Reporter, directory: NodeDirectory,
               status: StatusLine, experiment: ExperimentConfig) -> Reporting:
        self.reporter, self.directory, self.status = reporter, directory, status
        self.experiment = experiment
        self._sent: dict[str, list[int]] = {}
        return self

    def watch(self, out_dir: Path) -> Reporting:
        """Name kernel OOM kills in the fleet's cgroups (:class:`fleet.OomWatch`; none in
        simulation) and keep every error reply's full text in ``<out_dir>/client-errors.log``."""
        self.oom = fleet.OomWatch(out_dir / fleet.RUN_DIR)
        self._kills: dict[int, str] = {}  # partition id -> OOM kill not yet in a record
        self.errors_log = out_dir / ERRORS_LOG
        return self

    def _kill_of(self, partition_id: int) -> str | None:
        """The OOM kill the kernel made in the node's cgroup since the last error record of
        that node took one (:meth:`fleet.OomWatch.killed`), if any."""
        if reason := self.oom.killed(partition_id):
            self._kills[partition_id] = reason
        return self._kills.get(partition_id)

    def killed(self, node_id: int) -> bool:
        """Whether the kernel killed a process of the node for memory since its last error
        record: its ClientApp will not reply (``WatchfulGrid`` stops waiting for it)."""
        return self._kill_of(self.directory.identity(node_id)[0]) is not None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config = ConfigRecord({**config, **round_config(self.experiment, server_round)})
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent["train"] = [m.metadata.dst_node_id for m in messages]
        self.status(f"round {server_round}: {len(messages)} clients training", force=True)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent["evaluate"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def _record(self, server_round: int, phase: str, received: list[Message]) -> None:
        results = [client_record(r, phase, server_round,
                                 self.directory.identity(r.metadata.src_node_id))
                   for r in received]
        answered = {r.metadata.src_node_id for r in received}
        for node_id in self._sent.get(phase, []):
            if node_id not in answered:
                pid, device = self.directory.identity(node_id)
                results.append(ClientRecord(
                    round=server_round, phase=phase, node_id=node_id, partition_id=pid,
                    device=device, status="error", reason="no reply before the round timeout",
                ))
        results = [self._explained(result) for result in results]
        self._keep_full_errors(received, results)
        for result in results:
            self.reporter.emit(client=result)
        if phase == "train":
            self.num_ok = sum(r.status == "ok" for r in results)
            self.num_failed = len(results) - self.num_ok

    def _explained(self, result: ClientRecord) -> ClientRecord:
        """An error (no reply included) of a node whose cgroup counted an OOM kill since its
        last error record is that kill: status ``oom``, the kernel and the limit named."""
        if result.status == "error" and self._kill_of(result.partition_id):
            reason = self._kills.pop(result.partition_id)
            return result.model_copy(update={"status": "oom", "reason": reason})
        return result

    def _keep_full_errors(self, received: list[Message], results: list[ClientRecord]) -> None:
        """Append the full text of error replies shortened for their event to the log
        (``results`` starts with the received replies' results, in order)."""
        full = [(result, reply.error.reason) for reply, result in zip(received, results,
                                                                      strict=False)
                if reply.has_error() and reply.error.reason != result.reason]
        if full:
            with self.errors_log.open("a") as log_file:
                log_file.writelines(f"round {r.round} {r.phase}, partition {r.partition_id} "
                                    f"({r.device}): {r.reason}\n{text}\n\n" for r, text in full)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        received = list(replies)
        self._record(server_round, "train", received)
        try:
            return super().aggregate_train(server_round, received)
        except InconsistentMessageReplies as err:
            log.warning("round %d: not aggregated (%s)", server_round, err)
            return None, None

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        received = list(replies)
        self._record(server_round, "evaluate", received)
        try:
            return super().aggregate_evaluate(server_round, received)
        except InconsistentMessageReplies as err:
            log.warning("round %d: evaluation not aggregated (%s)", server_round, err)
            return None


class ReportingFedAvg(Reporting, FedAvg):
    """FedAvg that reports every client."""


class ReportingFedProx(Reporting, FedProx):
    """FedProx that reports every client."""


class ReportingFedAdam(Reporting, FedAdam):
    """FedAdam that reports every client."""


def make_strategy(config: ExperimentConfig, num_nodes: int) -> Reporting:
    """The experiment's strategy, sampling ``fraction_train`` of the registered nodes."""
    common = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": min(config.min_train_clients, num_nodes),
        "min_evaluate_nodes": 0 if config.fraction_evaluate == 0 else 1,
        # registration was awaited already; a node that dies later must not stall sampling
        "min_available_nodes": min(config.min_train_clients, num_nodes),
    }
    if config.strategy == "fedprox":
        return ReportingFedProx(**common, proximal_mu=config.proximal_mu)
    if config.strategy == "fedadam":
        return ReportingFedAdam(**common, eta=config.server_lr, eta_l=config.lr)
    return ReportingFedAvg(**common)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Pretrain, take the inventory, federate ``config.rounds`` rounds with events."""
    settings = settings_of(context.run_config)
    config = experiment(settings.config_json)
    random.seed(config.seed)  # the strategies sample nodes with `random`
    torch.manual_seed(config.seed)
    reporter = Reporter(settings.run_id, settings.out_dir, settings.report_url,
                        settings.report_token)
    status = StatusLine(reporter)
    try:
        status("pretraining on the server's half (or loading its cached checkpoint)", force=True)
        model = pretrained_model(config, on_step=status.pretrain_step)
        partitions(config, config.num_clients)  # stored, so ClientApps only read them
        test_loader = DataLoader(test_dataset(config), batch_size=256)
        nodes = wait_for_nodes(grid, config.num_clients, status=status)
        status(f"asking {len(nodes)} nodes which device they are", force=True)
        strategy = make_strategy(config, len(nodes))
        strategy.attach(reporter, NodeDirectory.ask(grid, config, nodes), status, config)
        strategy.watch(Path(settings.out_dir))

        def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, accuracy = evaluate_model(model, test_loader)
            reporter.emit(round=RoundResult(
                round=server_round, accuracy=accuracy, loss=loss,
                num_ok=strategy.num_ok if server_round else 0,
                num_failed=strategy.num_failed if server_round else 0,
            ))
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        strategy.start(
            WatchfulGrid(grid, strategy.killed),
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.rounds,
            timeout=config.round_timeout_s,
            train_config=ConfigRecord(),
            evaluate_fn=central_evaluation,
        )
    finally:
        reporter.close()
