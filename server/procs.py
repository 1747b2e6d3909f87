"""Processes edgefed starts: spawn them, put what they launch under a memory limit, find their
descendants, stop them by pid (:func:`terminate`, the one teardown every starter uses).

Memory limits (per emulated device, covering the ClientApps its app runtime launches):
- ``cgroup``: a memory cgroup ``edgefed/<group>/<node>`` whose limit is the profile's
  ``ram_bytes``, in the first writable memory hierarchy (:func:`cgroup_hierarchy`): cgroup v1
  (``/sys/fs/cgroup/memory``, ``memory.limit_in_bytes``) or v2 (``/sys/fs/cgroup`` or
  ``/sys/fs/cgroup/unified`` with the memory controller, ``memory.max``). The kernel's OOM killer
  enforces it on every process in the group and counts its kills (:func:`oom_kills`).
- ``rlimit``: where no such hierarchy exists, ``RLIMIT_DATA`` (heap and private mappings) per
  process; weaker (see :data:`RLIMIT_WARNING`), and said so wherever the fleet is shown.

A process enters the limit through a launcher (:func:`write_launcher`): a shell script named like
the tool it stands for (``flwr-clientapp``) that joins the cgroup (or sets the rlimit) and execs
the real tool. Put first on the PATH of a program that starts the tool by name, it limits what
that program launches and not the program itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
from pydantic import BaseModel

CGROUP_V1_ROOT = Path("/sys/fs/cgroup/memory")
CGROUP_V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
LimitKind = Literal["cgroup", "rlimit", "none"]
RLIMIT_WARNING = (
    "memory limits are rlimit-based: no writable cgroup memory hierarchy (v1 at "
    f"{CGROUP_V1_ROOT}, or v2 with the memory controller), so each ClientApp only gets "
    "RLIMIT_DATA, which fails its large allocations but neither counts all of its memory nor "
    "lets the kernel's OOM killer enforce the device's limit"
)
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.1

log = logging.getLogger(__name__)


class ManagedProcess(BaseModel):
    """A process edgefed started; ``create_time`` guards against a recycled pid."""

    role: str
    pid: int
    create_time: float
    cmd: list[str]
    log: str
    limit: LimitKind = "none"  # of what it launches (see spawn)
    limit_bytes: int | None = None
    cgroup: str | None = None

    def alive(self) -> bool:
        proc = _process(self)
        return proc is not None and proc.status() != psutil.STATUS_ZOMBIE


class MemoryLimit(BaseModel):
    """A memory limit of ``limit_bytes`` by ``kind``; ``cgroup`` is its group's path."""

    kind: LimitKind
    limit_bytes: int
    cgroup: str | None = None


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir() -> Path:
    """The directory of this interpreter's console scripts (flwr, flower-superlink, ...)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: our venv first on PATH (the SuperLink spawns
    ``flower-superexec`` by name), an isolated ``FLWR_HOME``, no update check."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    return env


def become_subreaper() -> None:
    """Orphaned descendants (Ray workers, SuperExecs) are re-parented to us, so we reap them
    instead of leaving zombies under a PID 1 that does not (Linux only; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@dataclass(frozen=True)
class Hierarchy:
    """A cgroup memory hierarchy mounted at ``root``: ``version`` 1 (the memory controller's own
    mount) or 2 (the unified mount)."""

    version: Literal[1, 2]
    root: Path

    @property
    def limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    def usable(self) -> bool:
        """Mounted, writable by us, and (v2) offering the memory controller."""
        if not os.access(self.root, os.W_OK):
            return False
        if self.version == 1:
            return (self.root / self.limit_file).exists()
        return "memory" in _read(self.root / "cgroup.controllers").split()

    def make(self, group: str, name: str, limit_bytes: int) -> Path:
        """Create ``edgefed/<group>/<name>`` with a hard limit of ``limit_bytes``, swap included.

        v2 limits a group only if every ancestor delegates the memory controller
        (``+memory`` in ``cgroup.subtree_control``), and a delegating group may hold no
        processes: ``edgefed`` and ``edgefed/<group>`` only delegate, the leaf holds the node."""
        path = self.root / "edgefed" / group / name
        if self.version == 1:
            path.mkdir(parents=True, exist_ok=True)
            (path / self.limit_file).write_text(str(limit_bytes))
            _write_if_present(path / "memory.memsw.limit_in_bytes", str(limit_bytes))
            return path
        for parent in (self.root, path.parent.parent, path.parent):
            parent.mkdir(exist_ok=True)
            if "memory" not in _read(parent / "cgroup.subtree_control").split():
                (parent / "cgroup.subtree_control").write_text("+memory")
        path.mkdir(exist_ok=True)
        (path / self.limit_file).write_text(str(limit_bytes))
        _write_if_present(path / "memory.swap.max", "0")
        return path


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write_if_present(path: Path, value: str) -> None:
    """Write an optional control file (absent when the kernel lacks the feature)."""
    if path.exists():
        with contextlib.suppress(OSError):
            path.write_text(value)


def cgroup_hierarchy() -> Hierarchy | None:
    """The first usable memory hierarchy: v1, then v2 (unified at the root, or hybrid)."""
    candidates = [Hierarchy(1, CGROUP_V1_ROOT), *(Hierarchy(2, r) for r in CGROUP_V2_ROOTS)]
    return next((h for h in candidates if h.usable()), None)


def cgroup_available() -> bool:
    """True where a memory cgroup can limit a node (see :func:`cgroup_hierarchy`)."""
    return cgroup_hierarchy() is not None


def memory_limit(group: str, name: str, limit_bytes: int) -> MemoryLimit:
    """A new limit of ``limit_bytes``: the cgroup ``edgefed/<group>/<name>`` where possible,
    else ``rlimit`` (also when the hierarchy refuses the group, e.g. a v2 root whose own
    processes forbid delegating the memory controller)."""
    hierarchy = cgroup_hierarchy()
    if hierarchy is not None:
        try:
            path = hierarchy.make(group, name, limit_bytes)
        except OSError as err:
            log.warning("no memory cgroup for %s under %s (%s): rlimit instead", name,
                        hierarchy.root, err)
            remove_cgroup(hierarchy.root / "edgefed" / group / name, timeout=0)
        else:
            return MemoryLimit(kind="cgroup", limit_bytes=limit_bytes, cgroup=str(path))
    return MemoryLimit(kind="rlimit", limit_bytes=limit_bytes)


def oom_kills(cgroup: str | Path) -> int:
    """How many processes the kernel's OOM killer killed in ``cgroup``: the ``oom_kill`` line of
    ``memory.events`` (v2) or ``memory.oom_control`` (v1); 0 if the group or line is absent."""
    path = Path(cgroup)
    record = path / "memory.events"
    text = _read(record if record.exists() else path / "memory.oom_control")
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def write_launcher(directory: Path, tool: str, limit: MemoryLimit) -> Path:
    """Write ``directory/<tool>``: ``sh`` that enters ``limit``, then execs the real ``tool``
    (:func:`which`) with its arguments; returns ``directory``, to put first on a PATH."""
    if limit.kind == "cgroup":
        enter = f"echo $$ > {shlex.quote(f'{limit.cgroup}/cgroup.procs')}"
    else:  # sh's ulimit -d counts KiB
        enter = f"ulimit -d {limit.limit_bytes // 1024}"
    directory.mkdir(parents=True, exist_ok=True)
    launcher = directory / tool
    launcher.write_text(f"#!/bin/sh\n# {tool} under a {limit.limit_bytes}-byte {limit.kind} "
                        f"memory limit (written by edgefed)\n{enter} || exit 1\n"
                        f'exec {shlex.quote(which(tool))} "$@"\n')
    launcher.chmod(0o755)
    return directory


def remove_cgroup(path: str | Path, timeout: float = 10.0) -> None:
    """Remove an (emptied) cgroup and its parents once they are empty."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            path.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
    for parent in (path.parent, path.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()


def spawn(
    role: str,
    cmd: list[str],
    log: Path,
    env: dict[str, str],
    *,
    limit: MemoryLimit | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``cmd`` in its own session, output to ``log``. ``limit`` is the one its launches
    enter (through :func:`write_launcher`s on ``env``'s PATH): recorded, so that :func:`stop`
    stops the members of its cgroup too and removes it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return ManagedProcess(
        role=role,
        pid=popen.pid,
        create_time=psutil.Process(popen.pid).create_time(),
        cmd=cmd,
        log=str(log),
        limit=limit.kind if limit else "none",
        limit_bytes=limit.limit_bytes if limit else None,
        cgroup=limit.cgroup if limit else None,
    )


def _process(managed: ManagedProcess) -> psutil.Process | None:
    try:
        proc = psutil.Process(managed.pid)
        return proc if abs(proc.create_time() - managed.create_time) < 0.01 else None
    except psutil.Error:
        return None


def _cgroup_members(managed: ManagedProcess) -> list[psutil.Process]:
    """Every process in the node's cgroup: orphans whose parent was OOM-killed included."""
    if not managed.cgroup:
        return []
    members = []
    with contextlib.suppress(OSError):
        for line in (Path(managed.cgroup) / "cgroup.procs").read_text().split():
            with contextlib.suppress(psutil.Error):
                members.append(psutil.Process(int(line)))
    return members


def _tree(managed: Iterable[ManagedProcess]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for m in managed:
        for member in _cgroup_members(m):
            procs[member.pid] = member
        root = _process(m)
        if root is None:
            continue
        with contextlib.suppress(psutil.Error):
            procs.update({c.pid: c for c in root.children(recursive=True)})
        procs[root.pid] = root
    return list(procs.values())


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone (or not ours) is skipped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (which may have left its group: Flower's own sessions)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running: same pid *and* start time (psutil's check), not zombies."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def signal_all(procs: Iterable[psutil.Process], sig: int, group: int | None = None) -> None:
    """Send ``sig`` to process group ``group`` (when given) and to each of ``procs``."""
    if group is not None:
        signal_group(group, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _wait(procs: list[psutil.Process], group: int | None, timeout: float
          ) -> list[psutil.Process]:
    """Wait until ``procs`` and the group have exited, at most ``timeout`` s; the survivors.
    Those that are our children are reaped (psutil), no one else's exit status is taken; a
    zombie that is not ours has exited (psutil would wait for its parent to reap it, which may
    be one of ``procs`` killed at the same time)."""
    deadline = time.monotonic() + timeout
    alive = procs
    while (running(alive) or (group is not None and group_alive(group))) and (
            time.monotonic() < deadline):
        if alive:
            _, alive = psutil.wait_procs(alive, timeout=POLL_S)
        else:
            time.sleep(POLL_S)
    return running(alive)


def terminate(find: Callable[[], Iterable[psutil.Process]], timeout: float,
              group: int | None = None, grace: float | None = None) -> None:
    """The one teardown of processes edgefed started: SIGTERM to process group ``group``
    (when given) and to every process ``find()`` returns; wait up to ``grace`` s (default
    ``timeout``) for them and the group to exit; then SIGKILL the group, the survivors and
    whatever ``find()`` returns now (children forked during the SIGTERM), and wait up to
    ``timeout`` s again.

    ``find`` is called twice and must return only processes known to be ours (recorded pids
    checked against their start time, their descendants, cgroup members).
    """
    first = list({p.pid: p for p in find()}.values())
    signal_all(first, signal.SIGTERM, group)
    survivors = _wait(first, group, timeout if grace is None else grace)
    late = list({p.pid: p for p in [*survivors, *running(find())]}.values())
    signal_all(late, signal.SIGKILL, group)
    _wait(late, group, timeout)


def reap() -> None:
    """Collect exit statuses of any of our finished children (no zombies left behind)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def stop(
    managed: Iterable[ManagedProcess], timeout: float = 10.0,
    extra: Iterable[psutil.Process] = (), grace: float | None = None,
) -> None:
    """Stop the given processes, their descendants and the members of their cgroups, plus
    ``extra`` processes (:func:`terminate`, SIGKILL after ``grace`` s if given); then remove
    their cgroups.

    Only pids recorded in ``managed`` (checked against their start time), their descendants and
    cgroup members, and ``extra`` are signalled.
    """
    managed = list(managed)
    extra = list(extra)
    terminate(lambda: _tree(managed) + extra, timeout, grace=grace)
    reap()
    for m in managed:
        if m.cgroup:
            remove_cgroup(m.cgroup)


def new_children(before: set[int]) -> list[psutil.Process]:
    """Our descendants whose pid is not in ``before``: what a run left re-parented to us
    (we are a child subreaper, see :func:`become_subreaper`)."""
    with contextlib.suppress(psutil.Error):
        return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    return []


def which(tool: str) -> str:
    """Absolute path of a console script installed beside this interpreter."""
    path = bin_dir() / tool
    return str(path) if path.exists() else (shutil.which(tool) or tool)
