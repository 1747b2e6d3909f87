"""Processes edgefed starts: spawn them, put what they launch under a memory limit, find their
descendants, stop them by pid (:func:`terminate`, the one teardown every starter uses).

Memory limits (per emulated device, covering the ClientApps its app runtime launches):
- ``cgroup``: a cgroup-v1 memory group ``/sys/fs/cgroup/memory/edgefed/<group>/<node>`` with
  ``memory.limit_in_bytes`` = the profile's ``ram_bytes``; the kernel's OOM killer enforces the
  limit on every process in it.
- ``rlimit``: where no writable cgroup-v1 memory hierarchy exists, ``RLIMIT_DATA`` (heap and
  private mappings) per process.

A process enters the limit through a launcher (:func:`write_launcher`): a shell script named like
the tool it stands for (``flwr-clientapp``) that joins the cgroup (or sets the rlimit) and execs
the real tool. Put first on the PATH of a program that starts the tool by name, it limits what
that program launches and not the program itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import psutil
from pydantic import BaseModel

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
LimitKind = Literal["cgroup", "rlimit", "none"]
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.1


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


def cgroup_available() -> bool:
    """True where a cgroup-v1 memory hierarchy is mounted and writable by us."""
    return (CGROUP_ROOT / "memory.limit_in_bytes").exists() and os.access(CGROUP_ROOT, os.W_OK)


def limit_kind() -> LimitKind:
    """The memory-limit mechanism this machine offers: cgroup if possible, else rlimit."""
    return "cgroup" if cgroup_available() else "rlimit"


def make_cgroup(group: str, name: str, limit_bytes: int) -> Path:
    """Create ``edgefed/<group>/<name>`` with a hard memory limit (swap included, if known)."""
    path = CGROUP_ROOT / "edgefed" / group / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
    memsw = path / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        with contextlib.suppress(OSError):
            memsw.write_text(str(limit_bytes))
    return path


def memory_limit(group: str, name: str, limit_bytes: int) -> MemoryLimit:
    """A new limit of ``limit_bytes``: the cgroup ``edgefed/<group>/<name>`` where possible."""
    if limit_kind() == "cgroup":
        return MemoryLimit(kind="cgroup", limit_bytes=limit_bytes,
                           cgroup=str(make_cgroup(group, name, limit_bytes)))
    return MemoryLimit(kind="rlimit", limit_bytes=limit_bytes)


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
    Those that are our children are reaped (psutil), no one else's exit status is taken."""
    deadline = time.monotonic() + timeout
    alive = procs
    while (alive or (group is not None and group_alive(group))) and (
            time.monotonic() < deadline):
        if alive:
            _, alive = psutil.wait_procs(alive, timeout=POLL_S)
        else:
            time.sleep(POLL_S)
    return alive


def terminate(find: Callable[[], Iterable[psutil.Process]], timeout: float,
              group: int | None = None) -> None:
    """The one teardown of processes edgefed started: SIGTERM to process group ``group``
    (when given) and to every process ``find()`` returns; wait up to ``timeout`` s for them
    and the group to exit; then SIGKILL the group, the survivors and whatever ``find()``
    returns now (children forked during the SIGTERM), and wait up to ``timeout`` s again.

    ``find`` is called twice and must return only processes known to be ours (recorded pids
    checked against their start time, their descendants, cgroup members).
    """
    first = list({p.pid: p for p in find()}.values())
    signal_all(first, signal.SIGTERM, group)
    survivors = _wait(first, group, timeout)
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
    extra: Iterable[psutil.Process] = (),
) -> None:
    """Stop the given processes, their descendants and the members of their cgroups, plus
    ``extra`` processes (:func:`terminate`); then remove their cgroups.

    Only pids recorded in ``managed`` (checked against their start time), their descendants and
    cgroup members, and ``extra`` are signalled.
    """
    managed = list(managed)
    extra = list(extra)
    terminate(lambda: _tree(managed) + extra, timeout)
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
