"""Who a node is in an experiment: its partition, device profile and planning policy.

Torch-free on purpose: a node answers the server's inventory with this alone, so a device whose
memory limit cannot hold torch (``pi-starved``) still says who it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.config import ExperimentConfig, Policy
from common.devices import Catalogue, DeviceProfile, assign_entries, load_catalogue


@dataclass(frozen=True)
class Node:
    """Who this node is in the experiment: partition, device profile and planning policy."""

    partition_id: int
    num_partitions: int
    device: DeviceProfile
    policy: Policy

    def available(self, config: ExperimentConfig, server_round: int) -> bool:
        """Online in this round with probability ``availability``; deterministic per
        (seed, round, partition)."""
        draw = random.Random(f"{config.seed}/{server_round}/{self.partition_id}").random()
        return draw < self.device.availability


def resolve_node(
    config: ExperimentConfig, node_config: dict, catalogue: Catalogue | None = None
) -> Node:
    """The node's identity: ``partition-id`` (and ``num-partitions``) from the node-config;
    the device from node-config ``device`` (deployment) or else from the one assignment of
    the experiment's fleet (``common.devices.assign_entries``; simulation)."""
    catalogue = catalogue or load_catalogue()
    partition_id = int(node_config["partition-id"])
    num_partitions = int(node_config.get("num-partitions", config.num_clients))
    entries = assign_entries(config.fleet)
    entry = entries[partition_id % len(entries)]
    device = catalogue.profile(str(node_config.get("device", entry.device)))
    return Node(partition_id, num_partitions, device, config.policy_of(entry))
