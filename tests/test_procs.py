"""Launchers put what they start under a device's memory limit, and only that."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from server import procs

LIMIT = 64 * 2**20
SHOW_LIMITS = ("import resource, sys; print(resource.getrlimit(resource.RLIMIT_DATA)[0]); "
               "print(open('/proc/self/cgroup').read())")


def _through(launchers: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``python3 -c code`` started by name, the way the app runtime starts ``flwr-clientapp``."""
    env = {**os.environ, "PATH": f"{launchers}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["python3", "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_rlimit_launcher_sets_the_data_limit_of_the_launched_process(tmp_path: Path) -> None:
    limit = procs.MemoryLimit(kind="rlimit", limit_bytes=LIMIT)
    launchers = procs.write_launcher(tmp_path / "bin", "python3", limit)
    shown = _through(launchers, SHOW_LIMITS)
    assert shown.returncode == 0, shown.stderr
    assert int(shown.stdout.split()[0]) == LIMIT
    assert _through(launchers, f"bytearray({2 * LIMIT})").returncode != 0  # MemoryError


@pytest.mark.skipif(not procs.cgroup_available(), reason="needs a writable cgroup-v1 memory "
                    "hierarchy (/sys/fs/cgroup/memory, root)")
def test_cgroup_launcher_joins_the_cgroup_whose_limit_the_kernel_enforces(tmp_path: Path) -> None:
    limit = procs.memory_limit(f"test-{os.getpid()}", "node-0", LIMIT)
    try:
        assert int((Path(str(limit.cgroup)) / "memory.limit_in_bytes").read_text()) == LIMIT
        launchers = procs.write_launcher(tmp_path / "bin", "python3", limit)
        shown = _through(launchers, SHOW_LIMITS)
        assert shown.returncode == 0, shown.stderr
        memory_line = next(line for line in shown.stdout.splitlines() if ":memory:" in line)
        assert memory_line.endswith(str(limit.cgroup).removeprefix(str(procs.CGROUP_ROOT)))
        assert "/edgefed/" not in Path("/proc/self/cgroup").read_text()  # we stay outside
        killed = _through(launchers, f"b'1' * {2 * LIMIT}")
        assert killed.returncode == -9  # the OOM killer, within the cgroup
    finally:
        procs.remove_cgroup(str(limit.cgroup))
    assert not (procs.CGROUP_ROOT / "edgefed" / f"test-{os.getpid()}").exists()



def _group(script: str, members: int) -> tuple[subprocess.Popen, list]:
    """``sh -c script`` as the leader of a new process group, once it has ``members``
    processes (itself included)."""
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(tree := procs.process_tree(leader.pid)) < members:
        assert time.monotonic() < deadline, "the group did not start"
        time.sleep(0.05)
    return leader, tree


def test_terminate_stops_a_group_that_exits_on_sigterm_without_the_kill() -> None:
    leader, tree = _group("sleep 60 & sleep 60 & wait", 3)
    started = time.monotonic()
    procs.terminate(lambda: tree, timeout=60, group=leader.pid)
    assert time.monotonic() - started < 60  # did not wait for the SIGKILL deadline
    assert procs.running(tree) == [] and not procs.group_alive(leader.pid)
    assert leader.returncode is None or leader.returncode == -signal.SIGTERM


def test_terminate_kills_what_ignores_sigterm_after_the_timeout() -> None:
    leader, tree = _group("trap '' TERM; sleep 60 & sleep 60 & wait", 3)
    started = time.monotonic()
    procs.terminate(lambda: procs.process_tree(leader.pid), timeout=1.0, group=leader.pid)
    assert time.monotonic() - started >= 1.0
    assert procs.running(tree) == []  # killed; zombies until their new parent reaps them:
    deadline = time.monotonic() + 30
    while procs.group_alive(leader.pid):
        assert time.monotonic() < deadline, "killed members were never reaped"
        time.sleep(0.1)
