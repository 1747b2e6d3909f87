"""Plain Flower FedAvg: the same model, data partition, local steps and central evaluation as
an edgefed run, but every client fine-tunes the last ``last_k`` layers with plain autograd."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader

from client.task import client_dataset, trainable_sgd
from common.compression import trainable_layers
from common.runconfig import experiment
from common.train import evaluate, initial_model, pretrain_setup_b, train
from server.task import test_dataset

client = ClientApp()
server = ServerApp()


@client.train()
def fit(msg: Message, context: Context) -> Message:
    config = experiment(str(context.run_config["config-json"]))
    torch.set_num_threads(1)  # what edgefed's devices get (cpus <= 1): same threads, same work
    model = initial_model(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.requires_grad_(False)
    for _, layer in trainable_layers(model)[-config.compression.last_k:]:
        layer.requires_grad_(True)
    pid = int(context.node_config["partition-id"])
    data = client_dataset(config, pid, int(context.node_config["num-partitions"]))
    result = train(model, DataLoader(data, batch_size=config.batch_size, shuffle=True),
                   trainable_sgd(model, config.lr), epochs=config.local_epochs,
                   max_steps=config.local_steps)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": result.examples,
                                                   "train-loss": result.loss})})
    return Message(content, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    config = experiment(str(context.run_config["config-json"]))
    out = Path(str(context.run_config["out-dir"]))
    model = pretrain_setup_b(config)
    test = DataLoader(test_dataset(config), batch_size=256)
    while len(list(grid.get_node_ids())) < config.num_clients:
        time.sleep(0.5)
    stamps: list[dict] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test)
        stamps.append({"round": server_round, "ts": time.time(), "accuracy": accuracy})
        (out / "rounds.json").write_text(json.dumps(stamps))
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    FedAvg(fraction_train=config.fraction_train, fraction_evaluate=0.0,
           min_train_nodes=config.min_train_clients,
           min_available_nodes=config.num_clients).start(
        grid, ArrayRecord(model.state_dict()), num_rounds=config.rounds,
        train_config=ConfigRecord({"lr": config.lr}), evaluate_fn=central)
