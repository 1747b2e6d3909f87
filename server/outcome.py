"""The verdict on a run: what its events say happened, beyond Flower's own status.

Flower reports ``finished:completed`` whenever the ServerApp returned, even when no client ever
trained (every reply an error: all out of memory, all crashed). A run is judged by its train
results, round by round:

- ``failed``: Flower did not complete the run, or no client trained successfully (status ``ok``)
  in any of its rounds: nothing was learned federatedly.
- ``finished``, *degraded*: completed, but some rounds had no successful client (their global
  model is the previous one, unchanged).
- ``finished``: every round had at least one successful client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from common.events import Event, RunState
from common.record import ClientRecord

COMPLETED = "finished:completed"  # Flower's status of a run whose ServerApp returned


@dataclass(frozen=True)
class Verdict:
    """``state`` is the run's final state; ``empty_rounds`` the rounds without a successful
    client (degraded when some, failed when all)."""

    state: RunState
    empty_rounds: tuple[int, ...]

    @property
    def degraded(self) -> bool:
        return self.state.status == "finished" and bool(self.empty_rounds)


def _failure_summary(results: list[ClientRecord]) -> str:
    """``"3 oom, 1 error; most common reason: out of memory: ..."``."""
    if not results:
        return "no client replied"
    counts = Counter(r.status for r in results)
    text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    reasons = Counter(r.reason for r in results if r.reason)
    return f"{text}; most common reason: {reasons.most_common(1)[0][0]}" if reasons else text


def judge(flower_status: str, events: Iterable[Event], rounds: int) -> Verdict:
    """The verdict on a run of ``rounds`` rounds whose Flower status is ``flower_status``."""
    train = [e.client for e in events if e.client is not None and e.client.phase == "train"]
    successful = {c.round for c in train if c.status == "ok"}
    empty = tuple(r for r in range(1, rounds + 1) if r not in successful)
    if flower_status != COMPLETED:
        return Verdict(RunState(status="failed", message=f"flower status {flower_status}"), empty)
    if rounds and len(empty) == rounds:
        message = (f"no client trained successfully in any of the {rounds} rounds "
                   f"({_failure_summary(train)})")
        return Verdict(RunState(status="failed", message=message[:4000]), empty)
    if empty:
        listed = ", ".join(str(r) for r in empty)
        message = (f"degraded: no client trained successfully in round{'s' * (len(empty) > 1)} "
                   f"{listed} of {rounds} (the global model stayed as it was)")
        return Verdict(RunState(status="finished", message=message), empty)
    return Verdict(RunState(status="finished", message=f"flower status {flower_status}"), empty)
