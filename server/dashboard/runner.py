"""Runs experiments as ``edgefed run`` processes: a queue, a few workers, clean cancellation.

Each run is one subprocess in its own session (so its own process group: the federation's
SuperLink, Ray and SuperNodes all inherit it), started as

    EDGEFED_REPORT_TOKEN=T edgefed run CONFIG.json --engine E --out DIR --run-id ID --report-url URL

(the token travels in the environment, which only the process's owner can read, never in argv).
It reports its events to the ingestion endpoint itself; once it exits, the runner imports its
``events.jsonl`` (what did not arrive, e.g. while the dashboard was down, is stored then; nothing
twice) and decides what the process could not say: ``running`` once started, and on exit
``finished``/``failed`` (from the exit code) or ``cancelled``, unless the run reported its end.
A restarted dashboard re-attaches to (:meth:`Runner.adopt`) the runs an earlier process started
that still run: it imports their file every second, can cancel them, and ends them the same way
(exit code unknown: a run that exits without reporting its end is ``failed``).

Cancel sends SIGTERM to the group (the run stops its own Flower processes) and SIGKILL after
``cancel_timeout_s`` to the group and to every descendant seen meanwhile (Flower's processes run
in sessions of their own); whatever is left after the leader exits gets the same. Nothing a run
does can raise into the dashboard: every error becomes the run's ``failed``.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from server.dashboard.models import Run
from server.dashboard.recovery import EventFile
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
TREE_EVERY = 10  # polls between two looks at the run's process tree (and its events file)
TOKEN_ENV = "EDGEFED_REPORT_TOKEN"


def run_process(run_id: str, pid: int | None) -> psutil.Process | None:
    """The process of run ``run_id`` that an earlier dashboard process started, if it still
    runs: the pid is only trusted while its command line still names the run."""
    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if run_id in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown: re-attached after a dashboard restart"
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


class QueueFull(RuntimeError):
    """429: ``max_queued_runs`` runs wait already; ``retry_after_s``: when to ask again."""

    retry_after_s = 30


class Runner:
    """``max_concurrent_runs`` worker threads take queued runs in order while fewer runs than
    that are held (adopted ones count; 0 pauses the queue)."""

    def __init__(self, settings: Settings, runlog: RunLog) -> None:
        self.settings = settings
        self.runlog = runlog
        self._queue: deque[tuple[str, str]] = deque()
        self._cond = threading.Condition()
        self._claimed: set[str] = set()
        self._procs: dict[str, subprocess.Popen | psutil.Process] = {}
        self._cancel_at: dict[str, float] = {}
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._work, name=f"edgefed-runner-{i}", daemon=True)
            for i in range(settings.max_concurrent_runs)
        ]
        self._watchers: list[threading.Thread] = []
        self._reserved = 0  # places promised by :meth:`place` and not yet submitted

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    @contextlib.contextmanager
    def place(self) -> Iterator[Callable[[str, str], None]]:
        """A place in the queue, promised until the block calls the ``submit(run_id, token)``
        it is given (or ends); raises :class:`QueueFull` when ``max_queued_runs`` runs wait
        already. Promised places count, so the bound holds under any concurrency."""
        with self._cond:
            if len(self._queue) + self._reserved >= self.settings.max_queued_runs:
                raise QueueFull(f"the launch queue is full ({self.settings.max_queued_runs} "
                                "runs waiting); try again later")
            self._reserved += 1
        promised = True

        def submit(run_id: str, token: str) -> None:
            nonlocal promised
            with self._cond:
                self._reserved -= 1
                promised = False
                self._queue.append((run_id, token))
                self._cond.notify()

        try:
            yield submit
        finally:
            if promised:
                with self._cond:
                    self._reserved -= 1

    def submit(self, run_id: str, token: str) -> None:
        with self._cond:
            self._queue.append((run_id, token))
            self._cond.notify()

    def adopt(self, run_id: str, pid: int | None) -> bool:
        """Hold a run that an earlier dashboard process started, if its process still runs
        (see the module's docstring); False when there is no such process."""
        proc = run_process(run_id, pid)
        if proc is None:
            return False
        watcher = threading.Thread(target=self._guarded, args=(run_id, self._watch, proc),
                                   name=f"edgefed-adopted-{run_id}", daemon=True)
        with self._cond:
            self._claimed.add(run_id)
            self._procs[run_id] = proc
            self._watchers.append(watcher)
        watcher.start()
        log.info("re-attached to run %s (pid %d)", run_id, pid)
        return True

    def import_events(self, run_id: str) -> int:
        """Store what the run's ``events.jsonl`` holds and the database lacks; returns the
        number of events read."""
        return self.events_file(run_id).import_into(self.runlog)

    def events_file(self, run_id: str) -> EventFile:
        return EventFile(run_id, self.settings.run_dir(run_id) / "out")

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
        """Shutdown: stop every run's processes (those runs become interrupted); queued runs
        stay queued, for the next start to queue again."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            procs = list(self._procs.values())
            self._cond.notify_all()
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        for thread in [*self._workers, *self._watchers]:
            thread.join(self.settings.cancel_timeout_s + 5)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                        not self._queue
                        or len(self._claimed) >= self.settings.max_concurrent_runs):
                    self._cond.wait()
                if self._stopping:
                    return
                run_id, token = self._queue.popleft()
                self._claimed.add(run_id)
            self._guarded(run_id, self._execute, token)

    def _guarded(self, run_id: str, body: Callable[..., None], *args: object) -> None:
        """``body(run_id, *args)``; whatever it raises becomes the run's ``failed``, never the
        thread's end. Afterwards the run is no longer held."""
        try:
            body(run_id, *args)
        except Exception as error:
            log.exception("run %s", run_id)
            self.runlog.set_state(run_id, "failed", f"runner error: {error}")
        finally:
            with self._cond:
                self._claimed.discard(run_id)
                self._procs.pop(run_id, None)
                self._cancel_at.pop(run_id, None)
                self._cond.notify_all()

    def _command(self, run: Run, config_path: Path, out_dir: Path) -> list[str]:
        report_url = f"{self.settings.base_url}/api/runs/{run.id}/events"
        return [*self.settings.run_command, "run", str(config_path), "--engine", run.engine,
                "--out", str(out_dir), "--run-id", run.id, "--report-url", report_url]

    def _execute(self, run_id: str, token: str) -> None:
        with self.runlog.db.read() as session:
            run = session.get(Run, run_id)
            config_json = run.experiment.config_json
        run_dir = self.settings.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.json"
        config_path.write_text(config_json)
        log_path = run_dir / "runner.log"
        command = self._command(run, config_path, run_dir / "out")
        with self._cond:
            if run_id in self._cancel_at or self._stopping:
                stopped = "cancelled" if run_id in self._cancel_at else "interrupted"
                self.runlog.set_state(run_id, stopped, "stopped before it started")
                return
        with log_path.open("ab") as output:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: token},
            )
        with self._cond:
            self._procs[run_id] = proc
            if run_id in self._cancel_at or self._stopping:
                signal_group(proc.pid, signal.SIGTERM)
        self.runlog.set_state(run_id, "running", "", pid=proc.pid)
        self._follow(run_id, proc, None, log_path)

    def _watch(self, run_id: str, proc: psutil.Process) -> None:
        """An adopted run: its events file is imported while it runs."""
        self._follow(run_id, proc, self.events_file(run_id),
                     self.settings.run_dir(run_id) / "runner.log")

    def _follow(self, run_id: str, proc: subprocess.Popen | psutil.Process,
                events: EventFile | None, log_path: Path) -> None:
        """Wait for the run's exit, stop what it left behind, import its events, end it."""
        known: dict[int, psutil.Process] = {}
        code = self._wait(run_id, proc, known, events)
        leftovers = running(known.values())
        if leftovers or group_alive(proc.pid):
            terminate(lambda: running(leftovers), self.settings.cancel_timeout_s, group=proc.pid)
        events = events or self.events_file(run_id)
        with self._cond:
            stopping = self._stopping
        if stopping:  # the dashboard's verdict (interrupted) first, then the run's events
            self._finish(run_id, code, log_path)
        events.import_into(self.runlog)  # may hold how the run ended: it wins over exit codes
        if not stopping:
            self._finish(run_id, code, log_path)

    def _wait(self, run_id: str, proc: subprocess.Popen | psutil.Process,
              known: dict[int, psutil.Process], events: EventFile | None) -> int | None:
        """The exit code (None when ``proc`` is not our child). Meanwhile ``known`` collects
        the run's process tree, ``events`` (if given) is imported, and once a cancel is older
        than the timeout, the group and that tree get SIGKILL."""
        polls = 0
        while True:
            if polls % TREE_EVERY == 0:
                for child in process_tree(proc.pid)[1:]:
                    known.setdefault(child.pid, child)
                if events is not None:
                    events.import_into(self.runlog)
            polls += 1
            try:
                return proc.wait(POLL_S)
            except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
                with self._cond:
                    since = self._cancel_at.get(run_id)
                    if self._stopping and since is None:
                        since = self._cancel_at[run_id] = time.monotonic()
                if since is not None and time.monotonic() - since > self.settings.cancel_timeout_s:
                    signal_all(running(known.values()), signal.SIGKILL, group=proc.pid)

    def _finish(self, run_id: str, code: int | None, log_path: Path) -> None:
        with self._cond:
            cancelled, stopping = run_id in self._cancel_at, self._stopping
        if stopping:
            status, message = "interrupted", f"dashboard stopped ({describe_exit(code)})"
        elif cancelled:
            status, message = "cancelled", f"cancelled ({describe_exit(code)})"
        elif code == 0:
            status, message = "finished", ""
        elif code is None:
            status, message = "failed", f"it ended without reporting how ({describe_exit(code)})"
        else:
            status, message = "failed", f"{describe_exit(code)}\n{log_tail(log_path)}"
        self.runlog.set_state(run_id, status, message, exit_code=code)
