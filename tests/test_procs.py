"""Launchers put what they start under a device's memory limit, and only that."""

from __future__ import annotations

import os
import subprocess
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
