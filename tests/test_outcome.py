"""The run's verdict, its output folder and its event stream: a run that taught nothing is
``failed``, an earlier run's folder is refused, and only this run's events are read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ExperimentConfig
from common.devices import load_catalogue
from common.events import Event, RunState
from common.record import ClientRecord
from server import runner
from server.outcome import COMPLETED, judge
from server.report import Reporter

REPO = Path(__file__).resolve().parents[1]


def _train(round_: int, partition: int, status: str, reason: str = "") -> Event:
    result = ClientRecord(round=round_, node_id=partition, partition_id=partition,
                          device="rpi5", status=status, reason=reason)
    return Event(run_id="r", client=result)


def test_no_successful_client_in_any_round_is_failed_with_the_reasons() -> None:
    events = [_train(r, p, "oom", "out of memory: killed by the kernel at the 150 MiB limit")
              for r in (1, 2) for p in (0, 1)]
    events.append(_train(2, 2, "error", "ValueError: bad"))
    verdict = judge(COMPLETED, events, rounds=2)
    assert verdict.state.status == "failed" and not verdict.degraded
    assert verdict.state.message == (
        "no client trained successfully in any of the 2 rounds (1 error, 4 oom; most common "
        "reason: out of memory: killed by the kernel at the 150 MiB limit)")
    assert verdict.empty_rounds == (1, 2)


def test_rounds_without_a_successful_client_make_the_run_degraded() -> None:
    events = [_train(1, 0, "ok"), _train(2, 0, "oom", "out of memory"), _train(3, 0, "ok")]
    verdict = judge(COMPLETED, events, rounds=3)
    assert verdict.state.status == "finished" and verdict.degraded
    assert verdict.state.message.startswith("degraded: no client trained successfully in "
                                            "round 2 of 3")


def test_a_round_that_never_happened_counts_as_empty() -> None:
    verdict = judge(COMPLETED, [_train(1, 0, "ok"), _train(1, 1, "ok")], rounds=2)
    assert verdict.degraded and verdict.empty_rounds == (2,)


def test_every_round_with_a_successful_client_is_finished() -> None:
    events = [_train(1, 0, "ok"), _train(1, 1, "dropped"), _train(2, 1, "ok")]
    evaluate = Event(run_id="r", client=ClientRecord(
        round=2, phase="evaluate", node_id=0, partition_id=0, device="rpi5", status="error"))
    verdict = judge(COMPLETED, [*events, evaluate], rounds=2)
    assert verdict.state == RunState(status="finished", message=f"flower status {COMPLETED}")
    assert not verdict.degraded


def test_flower_not_completing_the_run_is_failed_whatever_the_clients_did() -> None:
    verdict = judge("finished:failed", [_train(1, 0, "ok")], rounds=1)
    assert verdict.state == RunState(status="failed", message="flower status finished:failed")


def _tiny() -> ExperimentConfig:
    return ExperimentConfig(name="tiny", model="smallcnn", rounds=1,
                            fleet=[{"device": "rpi5", "count": 2}])


def test_a_folder_holding_an_earlier_run_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "events.jsonl").write_text("an earlier run's record\n")
    with pytest.raises(runner.OutDirInUse, match=f"out: {tmp_path} is not empty"):
        runner.run(_tiny(), load_catalogue(), "simulation", tmp_path, "second-run")
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]
    assert (tmp_path / "events.jsonl").read_text() == "an earlier run's record\n"


def test_a_file_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(runner.OutDirInUse):
        runner.check_out_dir(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    runner.check_out_dir(tmp_path / "empty")  # new or empty folders are fine
    runner.check_out_dir(tmp_path / "new")


def test_the_tail_reads_only_this_runs_events(tmp_path: Path) -> None:
    mine, other = Reporter("mine", tmp_path), Reporter("other", tmp_path)
    mine.emit(state=RunState(status="running", message="1"))
    other.emit(state=RunState(status="running", message="x"))
    mine.emit(state=RunState(status="finished", message="2"))
    seen: list[Event] = []
    outcome = runner.RunOutcome(status="pending", flwr_run_id=None)
    tail = runner.EventTail(tmp_path, "mine", outcome, seen.append)
    tail.poll()
    assert [e.state.message for e in outcome.events] == ["1", "2"] == [
        e.state.message for e in seen]
    tail.poll()  # nothing new
    assert len(outcome.events) == 2


CANCEL_SCRIPT = """
import os, signal
from server import runner
runner.install_signal_handlers()
with runner.signals_deferred():  # a run's cleanup
    os.kill(os.getpid(), signal.SIGTERM)
print("cleanup finished, outcome stands")
try:
    os.kill(os.getpid(), signal.SIGINT)
    signal.sigtimedwait([], 0.5)
except runner.RunCancelled as why:
    print(f"cancelled by {why}")
os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping is ignored
print("stopping undisturbed")
"""


def test_a_signal_cancels_once_and_never_interrupts_a_cleanup() -> None:
    done = subprocess.run([sys.executable, "-c", CANCEL_SCRIPT], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO, env={**os.environ,
                                                                  "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cleanup finished, outcome stands", "cancelled by SIGINT",
                                        "stopping undisturbed"]
