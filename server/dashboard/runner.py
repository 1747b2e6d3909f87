"""Runs experiments as ``edgefed run`` processes: a queue, a few workers, clean cancellation.

Each run is one subprocess in its own session (so its own process group: the federation's
SuperLink, Ray and SuperNodes all inherit it), started as

    edgefed run CONFIG.json --engine E --out DIR --run-id ID --report-url URL --report-token T

It reports its events to the ingestion endpoint itself; the runner only decides what the process
cannot say: ``running`` once started, and on exit ``finished``/``failed`` (from the exit code)
or ``cancelled``, unless the run already reported its end. Cancel sends SIGTERM to the group (the
run stops its own Flower processes) and SIGKILL after ``cancel_timeout_s`` to the group and to
every descendant seen meanwhile (Flower's processes run in sessions of their own); whatever is
left after the leader exits gets the same. Nothing a run does can raise into the dashboard:
every error becomes the run's ``failed``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from server.dashboard.models import Run
from server.dashboard.settings import Settings
from server.dashboard.store import RunLog
from server.procs import (
    POLL_S,
    group_alive,
    process_tree,
    running,
    signal_all,
    signal_group,
    terminate,
)

log = logging.getLogger(__name__)
TREE_EVERY = 10  # polls between two looks at the run's process tree


def stop_orphan(run_id: str, pid: int, timeout_s: float) -> bool:
    """Stop a run started by an earlier dashboard process, with its descendants, if it is
    still there. The pid is only trusted while its command line still names the run."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if run_id.encode() not in cmdline.split(b"\0"):
        return False
    tree = process_tree(pid)  # once: after it exits, the pid may be someone else's
    terminate(lambda: tree, timeout_s, group=pid)
    return True


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    if code == 2:
        return "invalid experiment config (exit code 2)"
    return f"exit code {code}"


def log_tail(path: Path, max_chars: int = 2000) -> str:
    with contextlib.suppress(OSError), path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - max_chars))
        return file.read().decode(errors="replace").strip()
    return ""


class Runner:
    """``max_concurrent_runs`` worker threads take queued runs in order (0 pauses the queue)."""

    def __init__(self, settings: Settings, runlog: RunLog) -> None:
        self.settings = settings
        self.runlog = runlog
        self._queue: deque[tuple[str, str]] = deque()
        self._cond = threading.Condition()
        self._claimed: set[str] = set()
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancel_at: dict[str, float] = {}
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._work, name=f"edgefed-runner-{i}", daemon=True)
            for i in range(settings.max_concurrent_runs)
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def submit(self, run_id: str, token: str) -> None:
        with self._cond:
            self._queue.append((run_id, token))
            self._cond.notify()

    def knows(self, run_id: str) -> bool:
        with self._cond:
            return run_id in self._claimed or any(rid == run_id for rid, _ in self._queue)

    def cancel(self, run_id: str) -> bool:
        """Ask a queued or running run to stop; False if this runner does not hold it."""
        with self._cond:
            queued = next((item for item in self._queue if item[0] == run_id), None)
            if queued is not None:
                self._queue.remove(queued)
            elif run_id not in self._claimed:
                return False
            self._cancel_at.setdefault(run_id, time.monotonic())
            proc = self._procs.get(run_id)
        if queued is not None:
            self.runlog.set_state(run_id, "cancelled", "cancelled before it started")
        elif proc is not None:
            signal_group(proc.pid, signal.SIGTERM)
        return True

    def stop(self) -> None:
        """Shutdown: stop every run's processes; runs in flight or queued become interrupted."""
        with self._cond:
            self._stopping = True
            queued = [run_id for run_id, _ in self._queue]
            self._queue.clear()
            procs = list(self._procs.values())
            self._cond.notify_all()
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        for run_id in queued:
            self.runlog.set_state(run_id, "interrupted", "dashboard stopped before the run began")
        for worker in self._workers:
            worker.join(self.settings.cancel_timeout_s + 5)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                run_id, token = self._queue.popleft()
                self._claimed.add(run_id)
            try:
                self._execute(run_id, token)
            except Exception as error:  # a broken run must never stop the worker
                log.exception("run %s", run_id)
                self.runlog.set_state(run_id, "failed", f"runner error: {error}")
            finally:
                with self._cond:
                    self._claimed.discard(run_id)
                    self._procs.pop(run_id, None)
                    self._cancel_at.pop(run_id, None)

    def _command(self, run: Run, config_path: Path, out_dir: Path, token: str) -> list[str]:
        report_url = f"{self.settings.base_url}/api/runs/{run.id}/events"
        return [*self.settings.run_command, "run", str(config_path), "--engine", run.engine,
                "--out", str(out_dir), "--run-id", run.id, "--report-url", report_url,
                "--report-token", token]

    def _execute(self, run_id: str, token: str) -> None:
        with self.runlog.db.read() as session:
            run = session.get(Run, run_id)
            config_json = run.experiment.config_json
        run_dir = (self.settings.runs_dir / run_id).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.json"
        config_path.write_text(config_json)
        log_path = run_dir / "runner.log"
        command = self._command(run, config_path, run_dir / "out", token)
        with self._cond:
            if run_id in self._cancel_at or self._stopping:
                stopped = "cancelled" if run_id in self._cancel_at else "interrupted"
                self.runlog.set_state(run_id, stopped, "stopped before it started")
                return
        with log_path.open("ab") as output:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        with self._cond:
            self._procs[run_id] = proc
            if run_id in self._cancel_at or self._stopping:
                signal_group(proc.pid, signal.SIGTERM)
        self.runlog.set_state(run_id, "running", "", pid=proc.pid)
        known: dict[int, psutil.Process] = {}
        code = self._wait(run_id, proc, known)
        leftovers = running(known.values())
        if leftovers or group_alive(proc.pid):
            terminate(lambda: running(leftovers), self.settings.cancel_timeout_s, group=proc.pid)
        self._finish(run_id, code, log_path)

    def _wait(self, run_id: str, proc: subprocess.Popen, known: dict[int, psutil.Process]
              ) -> int:
        """The exit code. Meanwhile ``known`` collects the run's process tree, and once a
        cancel is older than the timeout, the group and that tree get SIGKILL."""
        polls = 0
        while True:
            if polls % TREE_EVERY == 0:
                for child in process_tree(proc.pid)[1:]:
                    known.setdefault(child.pid, child)
            polls += 1
            try:
                return proc.wait(POLL_S)
            except subprocess.TimeoutExpired:
                with self._cond:
                    since = self._cancel_at.get(run_id)
                    if self._stopping and since is None:
                        since = self._cancel_at[run_id] = time.monotonic()
                if since is not None and time.monotonic() - since > self.settings.cancel_timeout_s:
                    signal_all(running(known.values()), signal.SIGKILL, group=proc.pid)

    def _finish(self, run_id: str, code: int, log_path: Path) -> None:
        with self._cond:
            cancelled, stopping = run_id in self._cancel_at, self._stopping
        if stopping:
            status, message = "interrupted", f"dashboard stopped ({describe_exit(code)})"
        elif cancelled:
            status, message = "cancelled", f"cancelled ({describe_exit(code)})"
        elif code == 0:
            status, message = "finished", ""
        else:
            status, message = "failed", f"{describe_exit(code)}\n{log_tail(log_path)}"
        self.runlog.set_state(run_id, status, message, exit_code=code)
