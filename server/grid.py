"""The Grid a round goes through: Flower's, except that the round stops waiting for nodes the
kernel has killed.

Flower's ``send_and_receive`` pushes a round's messages and pulls replies until every message
has one or the round timeout passes. A ClientApp that the kernel kills for memory never replies;
its SuperNode answers for it only once the app's heartbeat has lapsed (flwr 1.42: 2 x 30 s),
so every round in which a device ran out of memory lasted a minute at least. Here the wait ends
as soon as every message still without a reply went to a node that ``dead`` names (the server's
:class:`server.fleet.OomWatch` saw an OOM kill in its cgroup), and replies are pulled every
``POLL_S``, as Flower's simulation grid does (its deployment grid sleeps 3 s between pulls).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.1


class WatchfulGrid:
    """``grid`` with :meth:`send_and_receive` that gives up on dead nodes; everything else is
    ``grid``'s own."""

    def __init__(self, grid: Grid, dead: Callable[[int], bool], poll_s: float = POLL_S) -> None:
        self.grid = grid
        self.dead = dead
        self.poll_s = poll_s

    def __getattr__(self, name: str) -> object:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        """Push ``messages``, pull replies until each has one, ``timeout`` seconds have passed
        (None: no limit) or every message without a reply went to a dead node."""
        messages = list(messages)
        ids = [i for i in self.grid.push_messages(messages) if i]  # None: not pushed
        destination = {m.metadata.message_id: m.metadata.dst_node_id  # ids set by the push
                       for m in messages}
        waiting = {i: destination.get(i) for i in ids}
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        replies: list[Message] = []
        while waiting:
            pulled = list(self.grid.pull_messages(list(waiting)))
            replies += pulled
            for reply in pulled:
                waiting.pop(reply.metadata.reply_to_message_id, None)
            if all(node is not None and self.dead(node) for node in waiting.values()):
                break
            if time.monotonic() + self.poll_s >= deadline:
                break
            time.sleep(self.poll_s)
        return replies
