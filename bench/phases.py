"""Wall time of a benchmark's phases, with the load average at the start and after each, so a
timing in a JSON record says how busy the machine was while it was taken."""

from __future__ import annotations

import os
import time


class Phases:
    """Consecutive named phases: :meth:`end` closes the current one (it began at the previous
    ``end``, or at construction) and records its seconds and the load average then."""

    def __init__(self) -> None:
        self.started = self._mark = time.perf_counter()
        self.load_at_start = list(os.getloadavg())
        self.records: dict[str, dict[str, object]] = {}

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.records[name] = {"seconds": now - self._mark, "load_average": list(os.getloadavg())}
        self._mark = now

    @property
    def seconds(self) -> float:
        """Wall time since construction."""
        return time.perf_counter() - self.started

    def line(self) -> str:
        """One line: each phase's seconds and 1-minute load average."""
        return ", ".join(f"{name} {r['seconds']:.0f} s (load {r['load_average'][0]:.1f})"
                         for name, r in self.records.items())

    def record(self) -> dict[str, object]:
        """The JSON fields: total seconds, phases, load average at the start and now."""
        return {"seconds": self.seconds, "phases": self.records,
                "load_average_at_start": self.load_at_start,
                "load_average": list(os.getloadavg())}
