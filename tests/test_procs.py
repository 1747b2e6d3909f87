"""Launchers put what they start under a device's memory limit, and only that."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
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


@pytest.mark.skipif(procs.cgroup_hierarchy() != procs.Hierarchy(1, procs.CGROUP_V1_ROOT),
                    reason="needs a writable cgroup-v1 memory hierarchy (/sys/fs/cgroup/memory, "
                    "root)")
def test_cgroup_launcher_joins_the_cgroup_whose_limit_the_kernel_enforces(tmp_path: Path) -> None:
    limit = procs.memory_limit(f"test-{os.getpid()}", "node-0", LIMIT)
    try:
        assert int((Path(str(limit.cgroup)) / "memory.limit_in_bytes").read_text()) == LIMIT
        launchers = procs.write_launcher(tmp_path / "bin", "python3", limit)
        shown = _through(launchers, SHOW_LIMITS)
        assert shown.returncode == 0, shown.stderr
        memory_line = next(line for line in shown.stdout.splitlines() if ":memory:" in line)
        assert memory_line.endswith(str(limit.cgroup).removeprefix(str(procs.CGROUP_V1_ROOT)))
        assert "/edgefed/" not in Path("/proc/self/cgroup").read_text()  # we stay outside
        assert procs.oom_kills(str(limit.cgroup)) == 0
        killed = _through(launchers, f"b'1' * {2 * LIMIT}")
        assert killed.returncode == -9  # the OOM killer, within the cgroup
        assert procs.oom_kills(str(limit.cgroup)) == 1  # and its own record counts it
    finally:
        procs.remove_cgroup(str(limit.cgroup))
    assert not (procs.CGROUP_V1_ROOT / "edgefed" / f"test-{os.getpid()}").exists()


def _cgroupfs_v2(root: Path, controllers: str = "cpu io memory pids") -> Path:
    """A real directory laid out like a cgroup-v2 mount's root (files only: no kernel)."""
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    return root


def test_cgroup2_group_delegates_memory_down_to_the_node_and_sets_its_limit(
    tmp_path: Path,
) -> None:
    hierarchy = procs.Hierarchy(2, _cgroupfs_v2(tmp_path / "cgroup"))
    assert hierarchy.usable()
    node = hierarchy.make("fleet-1", "node-0", LIMIT)
    assert node == tmp_path / "cgroup" / "edgefed" / "fleet-1" / "node-0"
    assert (node / "memory.max").read_text() == str(LIMIT)
    for delegating in (tmp_path / "cgroup", node.parent.parent, node.parent):
        assert (delegating / "cgroup.subtree_control").read_text() == "+memory"
    assert not (node / "cgroup.subtree_control").exists()  # the leaf holds processes


def test_cgroup2_without_the_memory_controller_is_not_usable(tmp_path: Path) -> None:
    assert not procs.Hierarchy(2, _cgroupfs_v2(tmp_path / "cgroup", "cpu io pids")).usable()
    assert not procs.Hierarchy(2, tmp_path / "absent").usable()
    assert not procs.Hierarchy(1, tmp_path).usable()  # no memory.limit_in_bytes


def test_without_a_usable_hierarchy_limits_fall_back_to_rlimit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusing = _cgroupfs_v2(tmp_path / "v2")  # memory offered, but delegation is refused
    (refusing / "cgroup.subtree_control").unlink()
    (refusing / "cgroup.subtree_control").mkdir()  # writing it raises IsADirectoryError
    monkeypatch.setattr(procs, "CGROUP_V1_ROOT", tmp_path / "v1")
    monkeypatch.setattr(procs, "CGROUP_V2_ROOTS", (_cgroupfs_v2(tmp_path / "v2-no-mem", "io"),
                                                   refusing))
    assert procs.cgroup_hierarchy() == procs.Hierarchy(2, refusing)
    assert procs.memory_limit("g", "node-0", LIMIT) == procs.MemoryLimit(kind="rlimit",
                                                                         limit_bytes=LIMIT)
    monkeypatch.setattr(procs, "CGROUP_V2_ROOTS", (tmp_path / "v2-no-mem",))
    assert procs.cgroup_hierarchy() is None and not procs.cgroup_available()


@pytest.mark.parametrize(("record", "text", "kills"), [
    ("memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n", 2),
    ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", 1),
    ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n", 0),  # kernels before 4.13
])
def test_oom_kills_read_from_the_groups_own_record(tmp_path: Path, record: str, text: str,
                                                    kills: int) -> None:
    (tmp_path / record).write_text(text)
    assert procs.oom_kills(tmp_path) == kills
    assert procs.oom_kills(tmp_path / "gone") == 0


@pytest.fixture
def cgroup2_mount(tmp_path: Path) -> Iterator[Path]:
    """A real cgroup-v2 mount of this machine's unified hierarchy (root only), unmounted after."""
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)], capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount cgroup2 here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], timeout=30, check=True)


def test_cgroup2_on_a_real_mount(cgroup2_mount: Path, tmp_path: Path) -> None:
    hierarchy = procs.Hierarchy(2, cgroup2_mount)
    if "memory" not in (cgroup2_mount / "cgroup.controllers").read_text().split():
        assert not hierarchy.usable()
        pytest.skip("the memory controller is bound to cgroup v1 on this host: the v2 layout "
                    "is tested on a directory laid out like cgroupfs only")
    node = hierarchy.make(f"test-{os.getpid()}", "node-0", LIMIT)
    try:
        assert int((node / "memory.max").read_text()) == LIMIT
        limit = procs.MemoryLimit(kind="cgroup", limit_bytes=LIMIT, cgroup=str(node))
        launchers = procs.write_launcher(tmp_path / "bin", "python3", limit)
        assert _through(launchers, f"b'1' * {2 * LIMIT}").returncode == -9
        assert procs.oom_kills(node) == 1
    finally:
        procs.remove_cgroup(node)


def test_oom_watch_names_a_kill_once_from_the_nodes_cgroup(tmp_path: Path) -> None:
    from server import fleet

    def record(role: str, cgroup: Path | None = None) -> procs.ManagedProcess:
        return procs.ManagedProcess(role=role, pid=os.getpid(), create_time=0.0, cmd=[],
                                    log="", limit="cgroup" if cgroup else "none",
                                    limit_bytes=150 * 2**20 if cgroup else None,
                                    cgroup=str(cgroup) if cgroup else None)

    cgroup = tmp_path / "node-0"
    cgroup.mkdir()
    events = cgroup / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")
    state = fleet.FleetState(group="g", port=1, flwr_home="", superlink=record("superlink"))
    state.nodes.append(fleet.FleetNode(partition_id=3, device="pi-starved",
                                       supernode=record("supernode-3"),
                                       process=record("node-3", cgroup)))
    fleet.save(tmp_path, state)
    watch = fleet.OomWatch(tmp_path)
    assert watch.killed(3) is None
    events.write_text("oom 1\noom_kill 1\n")  # what the kernel writes after a kill
    assert watch.killed(3) == "out of memory: killed by the kernel at the 150 MiB limit"
    assert watch.killed(3) is None  # counted once
    assert watch.killed(0) is None  # a node without a cgroup
    assert fleet.OomWatch(tmp_path / "no-fleet").cgroups == {}


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
