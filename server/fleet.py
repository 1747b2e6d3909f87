"""A deployment fleet on loopback: one SuperLink and one SuperNode per emulated device.

``up`` starts the SuperLink, then per partition one ``flower-supernode`` with node-config
``partition-id``, ``num-partitions`` and ``device`` (the profile assigned by
:func:`common.devices.assign_devices`) in ``--isolation process`` mode, plus its app runtime,
``flower-superexec``, which starts one ``flwr-clientapp`` process per message. Every ClientApp
runs under the profile's ``ram_bytes`` (see :mod:`server.procs` for cgroup vs rlimit): the app
runtime finds ``flwr-clientapp`` first on its PATH in the node's ``bin`` folder, a launcher that
enters the limit and execs the real one (the loopback twin of ``deploy/device/flwr-clientapp``
in the compose fleet). The SuperNode and its app runtime, the node's link to the SuperLink, stay
outside the limit: a ClientApp killed for exceeding it is reported by its SuperNode as an error
reply ("ClientApp stopped responding.", once its heartbeat expires; the ServerApp names it an
out-of-memory kill from the cgroup's OOM record) and the node goes on serving later messages.
(With the app runtime inside the limit, the OOM killer could pick it instead; its node's
messages were then never claimed and never answered.) The fleet is recorded in
``<dir>/fleet.json`` so that ``down`` and ``status`` work from another process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from pydantic import BaseModel

from common.devices import DeviceProfile
from server import procs

STATE_FILE = "fleet.json"
RUN_DIR = "flower"  # `edgefed run` keeps its SuperLink (and fleet, with STATE_FILE) in <out>/flower
CLIENTAPP = "flwr-clientapp"  # what the app runtime starts, by name, for each message
READY_TIMEOUT_S = 60.0
SUPERLINK_ENV = "EDGEFED_SUPERLINK"  # host:port of a running SuperLink to attach runs to
ROOT_CERTIFICATES_ENV = "EDGEFED_SUPERLINK_ROOT_CERTIFICATES"  # its CA (PEM) when it runs TLS


class FleetNode(BaseModel):
    """One device: its SuperNode and its memory-limited app runtime."""

    partition_id: int
    device: str
    supernode: procs.ManagedProcess
    process: procs.ManagedProcess  # flower-superexec; its ClientApps run under the limit


class FleetState(BaseModel):
    """What ``fleet up`` started: enough to address, inspect and stop it."""

    group: str
    port: int
    flwr_home: str
    superlink: procs.ManagedProcess | None  # None: a SuperLink edgefed did not start (attach)
    nodes: list[FleetNode] = []
    host: str = "127.0.0.1"
    root_certificates: str | None = None  # CA of a TLS SuperLink; None: insecure

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def processes(self) -> list[procs.ManagedProcess]:
        own = [self.superlink] if self.superlink is not None else []
        return [*own, *(p for n in self.nodes for p in (n.supernode, n.process))]


def limit_warning(state: FleetState) -> str | None:
    """:data:`procs.RLIMIT_WARNING` if any node's ClientApps are only rlimit-limited."""
    return procs.RLIMIT_WARNING if any(n.process.limit == "rlimit" for n in state.nodes) else None


class OomWatch:
    """The kernel's OOM kills in each node's cgroup (:func:`procs.oom_kills`), by partition id,
    for a fleet recorded in ``directory`` (none recorded, or no cgroups: nothing to watch).

    :meth:`killed` says whether a node's count rose since the last look, i.e. whether the
    kernel killed one of its ClientApps for memory meanwhile."""

    def __init__(self, directory: Path) -> None:
        state = load(directory)
        nodes = state.nodes if state is not None else []
        self.cgroups = {n.partition_id: (n.process.cgroup, n.process.limit_bytes)
                        for n in nodes if n.process.cgroup}
        self.seen = {pid: procs.oom_kills(cgroup) for pid, (cgroup, _) in self.cgroups.items()}

    def killed(self, partition_id: int) -> str | None:
        """``"out of memory: killed by the kernel at the 150 MiB limit"`` if the kernel killed
        a process of the node since the last look, else None."""
        if partition_id not in self.cgroups:
            return None
        cgroup, limit_bytes = self.cgroups[partition_id]
        kills = procs.oom_kills(cgroup)
        new, self.seen[partition_id] = kills > self.seen[partition_id], kills
        return (f"out of memory: killed by the kernel at the {limit_bytes / 2**20:g} MiB limit"
                if new else None)


def superlink_cmd(port: int, simulation: bool) -> list[str]:
    """``flower-superlink`` serving its one HTTP API (Fleet, Control, ServerAppIo) on ``port``."""
    cmd = [
        procs.which("flower-superlink"),
        "--insecure",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
    ]
    return [*cmd, "--simulation"] if simulation else cmd


def device_node_config(partition_id: int, num_partitions: int, device: str) -> dict[str, object]:
    """What a device's SuperNode carries in its node-config (read by ``client.node.resolve_node``;
    also written into the compose files by :mod:`server.compose`)."""
    return {"partition-id": partition_id, "num-partitions": num_partitions, "device": device}


def node_config_arg(node_config: dict[str, object]) -> str:
    """The ``--node-config`` value: space-separated ``key=value``, strings TOML-quoted."""
    return " ".join(
        f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in node_config.items()
    )


def supernode_cmd(superlink: str, runtime_port: int, node_config: dict[str, object]) -> list[str]:
    """``flower-supernode`` for one device, its app runtime started separately (``process``
    isolation)."""
    pairs = node_config_arg(node_config)
    return [
        procs.which("flower-supernode"),
        "--insecure",
        "--superlink", superlink,
        "--port", str(runtime_port),
        "--isolation", "process",
        "--node-config", pairs,
    ]


def superexec_cmd(runtime_port: int, supernode_pid: int) -> list[str]:
    """The node's app runtime: starts a ``flwr-clientapp`` process for each run."""
    return [
        procs.which("flower-superexec"),
        "--insecure",
        "--runtime-api-address", f"127.0.0.1:{runtime_port}",
        "--parent-pid", str(supernode_pid),
    ]


def wait_ready(
    address: str, process: procs.ManagedProcess | None, timeout: float = READY_TIMEOUT_S,
    root_certificates: str | None = None,
) -> None:
    """Poll the SuperLink's ``/health`` (HTTPS verified against ``root_certificates`` if given)
    until it answers; ``RuntimeError`` if it died or hung."""
    where = f"see {process.log}" if process is not None else f"at {address}"
    url = f"{'https' if root_certificates else 'http'}://{address}/health"
    verify: str | bool = root_certificates or True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"flower-superlink exited early; {where}")
        try:
            if httpx.get(url, timeout=1.0, verify=verify).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink not ready after {timeout:.0f} s; {where}")


def start_superlink(directory: Path, simulation: bool) -> FleetState:
    """Start a SuperLink with its own ``FLWR_HOME`` under ``directory`` and wait until ready."""
    directory.mkdir(parents=True, exist_ok=True)
    flwr_home = directory / "flwr-home"
    port = procs.free_port()
    superlink = procs.spawn(
        "superlink",
        superlink_cmd(port, simulation),
        directory / "superlink.log",
        procs.flower_env(flwr_home),
        cwd=directory,
    )
    state = FleetState(
        group=f"{directory.name}-{superlink.pid}",
        port=port,
        flwr_home=str(flwr_home),
        superlink=superlink,
    )
    save(directory, state)
    try:
        wait_ready(state.address, superlink)
    except RuntimeError:
        procs.stop(state.processes)
        raise
    return state


def attach(directory: Path, address: str, root_certificates: str | None = None) -> FleetState:
    """A running SuperLink at ``host:port`` (e.g. the compose fleet's, whose SuperNodes are
    containers), over TLS when ``root_certificates`` names its CA: edgefed starts nothing, only
    waits until it answers."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{SUPERLINK_ENV}: expected HOST:PORT, got {address!r}")
    directory.mkdir(parents=True, exist_ok=True)
    state = FleetState(group=f"{directory.name}-attached", host=host, port=int(port),
                       flwr_home=str(directory / "flwr-home"), superlink=None,
                       root_certificates=root_certificates)
    wait_ready(state.address, None, root_certificates=root_certificates)
    return state


def up(directory: Path, devices: list[DeviceProfile]) -> FleetState:
    """SuperLink + one SuperNode per device (partition ``i`` = ``devices[i]``) whose ClientApps
    run under the device's ``ram_bytes``."""
    state = start_superlink(directory, simulation=False)
    env = procs.flower_env(Path(state.flwr_home))
    for pid, device in enumerate(devices):
        node_config = device_node_config(pid, len(devices), device.name)
        port = procs.free_port()
        log = directory / "nodes" / f"node-{pid}.log"
        supernode = procs.spawn(f"supernode-{pid}", supernode_cmd(state.address, port, node_config),
                                log, env, cwd=directory)
        limit = procs.memory_limit(state.group, f"node-{pid}", device.ram_bytes)
        try:
            launchers = procs.write_launcher(directory / "nodes" / f"node-{pid}" / "bin",
                                             CLIENTAPP, limit)
            runtime_env = {**env, "PATH": f"{launchers}{os.pathsep}{env['PATH']}"}
            runtime = procs.spawn(f"node-{pid}", superexec_cmd(port, supernode.pid), log,
                                  runtime_env, limit=limit, cwd=directory)
        except BaseException:  # not in the saved state yet: nobody else would remove it
            if limit.cgroup is not None:
                procs.remove_cgroup(limit.cgroup)
            raise
        state.nodes.append(FleetNode(partition_id=pid, device=device.name, supernode=supernode,
                                     process=runtime))
        save(directory, state)
    return state


def save(directory: Path, state: FleetState) -> None:
    (directory / STATE_FILE).write_text(state.model_dump_json(indent=2))


def load(directory: Path) -> FleetState | None:
    path = directory / STATE_FILE
    return FleetState.model_validate_json(path.read_text()) if path.exists() else None


def down(directory: Path, timeout: float = 10.0) -> int:
    """Stop every process of the fleet in ``directory`` (by recorded pid); returns how many
    were still running."""
    state = load(directory)
    if state is None:
        return 0
    running = sum(p.alive() for p in state.processes)
    procs.stop(state.processes, timeout=timeout)
    (directory / STATE_FILE).unlink()
    return running
