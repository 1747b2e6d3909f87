"""edgefed's Flower ClientApp: one emulated edge device with a training-memory budget.

``query`` (the server's inventory) is answered with the node's partition, device and budget;
``train`` and ``evaluate`` are what ``client.fit`` does. This module imports no torch and loads
``client.fit`` (torch, the models, the data) on the first message that trains or evaluates:
Python and Flower alone fit in a ClientApp limited to 150 MiB (``pi-starved``), torch does not,
so such a device answers the inventory itself and fails only the messages that need torch, with
an error reply. Without that, the server waited for the killed ClientApp's heartbeat to expire
(about 60 s) before it could even start round 1. (edgefed's runs put the experiment in the run
config; a bare ``flwr run .`` without one validates the default experiment file, which counts
the model's layers with torch.)
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.node import resolve_node
from common import wire
from common.devices import load_catalogue
from common.runconfig import experiment, settings_of

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Answer the server's inventory: partition id, device and budget of this node."""
    settings = settings_of(context.run_config)
    config = experiment(settings.config_json)
    node = resolve_node(config, dict(context.node_config), load_catalogue(settings.devices))
    record = wire.identity(node.partition_id, node.device.name, node.device.budget_bytes)
    return Message(RecordDict({"identity": ConfigRecord(record)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Plan, wrap, measure the first step, fine-tune, reply (``client.fit.train``)."""
    from client import fit  # torch: loaded by the first message that trains

    return fit.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global model's accuracy on this node's local data (``client.fit.evaluate``)."""
    from client import fit

    return fit.evaluate(msg, context)
