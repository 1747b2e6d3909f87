"""WatchfulGrid on a grid that answers as its nodes do: replies are collected until every
message has one, the timeout passes, or every node still owing one is dead."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, MessageType, RecordDict

from server.grid import WatchfulGrid

pytestmark = pytest.mark.usefixtures("task_identity")


class Nodes:
    """A grid whose node n replies ``reply_after[n]`` seconds after the push (never: None)."""

    def __init__(self, reply_after: dict[int, float | None]) -> None:
        self.reply_after = reply_after
        self.pushed: dict[str, tuple[Message, float]] = {}
        self.pulls = 0

    def get_node_ids(self) -> list[int]:
        return list(self.reply_after)

    def push_messages(self, messages: list[Message]) -> list[str]:
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"to-{message.metadata.dst_node_id}"
            self.pushed[message.metadata.message_id] = (message, time.monotonic())
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        self.pulls += 1
        due = []
        for message_id in message_ids:
            message, at = self.pushed[message_id]
            after = self.reply_after[message.metadata.dst_node_id]
            if after is not None and time.monotonic() >= at + after:
                due.append(Message(RecordDict(), reply_to=message))
                del self.pushed[message_id]
        return due


def _send(grid: WatchfulGrid, nodes: list[int], timeout: float | None) -> tuple[set[int], float]:
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN)
                for n in nodes]
    start = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=timeout)
    return {r.metadata.src_node_id for r in replies}, time.monotonic() - start


def test_waits_for_every_reply_of_live_nodes() -> None:
    nodes = Nodes({1: 0.0, 2: 0.3})
    grid = WatchfulGrid(nodes, dead=lambda node: False, poll_s=0.05)
    replied, _ = _send(grid, [1, 2], timeout=10)
    assert len(replied) == 2 and nodes.pulls >= 2
    assert grid.get_node_ids() == [1, 2]  # the rest is the wrapped grid's


def test_stops_waiting_once_every_missing_reply_is_from_a_dead_node() -> None:
    nodes = Nodes({1: 0.1, 2: None, 3: None})
    grid = WatchfulGrid(nodes, dead=lambda node: node in (2, 3), poll_s=0.05)
    replied, seconds = _send(grid, [1, 2, 3], timeout=30)
    assert len(replied) == 1 and seconds < 5


def test_a_silent_live_node_holds_the_round_until_the_timeout() -> None:
    nodes = Nodes({1: 0.0, 2: None, 3: None})
    grid = WatchfulGrid(nodes, dead=lambda node: node == 2, poll_s=0.05)
    replied, seconds = _send(grid, [1, 2, 3], timeout=0.5)
    assert len(replied) == 1 and seconds >= 0.4
