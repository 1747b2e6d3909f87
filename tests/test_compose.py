"""The compose generator: the checked-in file is in sync, every device gets its catalogue limits
and node-config, and docker-compose 1.29 (Compose Specification schema) accepts the output.

The real fleet on a Docker engine is ``make compose-test`` (tests/compose_e2e.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from common.devices import load_catalogue
from server.compose import (
    compose_command,
    fleet_devices,
    generate_compose,
    generate_tls_overlay,
    parse_mix,
)

ROOT = Path(__file__).resolve().parents[1]
CHECKED_IN = ROOT / "docker-compose.yml"
TLS_OVERLAY = ROOT / "deploy" / "docker-compose.tls.yml"
COMPOSE = shutil.which("docker-compose")


def _spec(fleet: object) -> dict:
    return yaml.safe_load(generate_compose(fleet, load_catalogue()))


def _node_config(command: list[str]) -> dict[str, str]:
    pairs = command[command.index("--node-config") + 1].split()
    return {k: v.strip('"') for k, _, v in (p.partition("=") for p in pairs)}


def test_checked_in_file_is_the_generated_compose_fleet() -> None:
    assert CHECKED_IN.read_text() == generate_compose("compose", load_catalogue()), (
        "docker-compose.yml is stale: run `edgefed compose --fleet compose --out "
        "docker-compose.yml`"
    )


def test_checked_in_tls_overlay_is_the_generated_one() -> None:
    assert TLS_OVERLAY.read_text() == generate_tls_overlay("compose", load_catalogue()), (
        "deploy/docker-compose.tls.yml is stale: run `edgefed compose --fleet compose --tls "
        "--out deploy/docker-compose.tls.yml`"
    )


def test_tls_overlay_secures_every_link_and_node() -> None:
    base = _spec("compose-test")["services"]
    overlay = yaml.safe_load(generate_tls_overlay("compose-test", load_catalogue()))["services"]
    assert "--insecure" not in overlay["superlink"]["command"]
    assert "--enable-supernode-auth" in overlay["superlink"]["command"]
    assert "--insecure" not in overlay["serverapp"]["command"]
    nodes = [n for n, s in base.items() if s["labels"]["edgefed.role"] == "supernode"]
    for name in nodes:
        command = overlay[name]["command"]
        assert "--insecure" not in command and "--auth-supernode-private-key" in command
        assert _node_config(command) == _node_config(base[name]["command"])
        pid = base[name]["labels"]["edgefed.partition-id"]
        assert any(v.endswith(f"/supernode-{pid}:/certs/supernode.key:ro")
                   for v in overlay[name]["volumes"])
        assert overlay[name]["depends_on"] == {
            "register": {"condition": "service_completed_successfully"}}
    assert set(overlay) <= {*base, "register"}


@pytest.mark.parametrize("fleet", ["compose", "compose-test", {"rpi5": 1, "phone": 2}])
def test_every_device_gets_its_limits_and_node_config(fleet: object) -> None:
    catalogue = load_catalogue()
    devices = fleet_devices(fleet, catalogue)
    services = _spec(fleet)["services"]
    apps = {name: s for name, s in services.items() if s["labels"]["edgefed.role"] == "clientapp"}
    nodes = {name: s for name, s in services.items() if s["labels"]["edgefed.role"] == "supernode"}
    assert len(apps) == len(nodes) == len(devices)
    for name, app in apps.items():
        pid = int(app["labels"]["edgefed.partition-id"])
        device = devices[pid]
        assert app["labels"]["edgefed.device"] == device.name
        assert app["mem_limit"] == app["memswap_limit"] == device.ram_bytes
        assert app["cpus"] == device.cpus
        node = app["network_mode"].removeprefix("service:")
        assert node in nodes and name == f"{node}-app"
        assert app["volumes"][0] == nodes[node]["volumes"][0]  # the pair's launch FIFO
        assert _node_config(nodes[node]["command"]) == {
            "partition-id": str(pid), "num-partitions": str(len(devices)), "device": device.name}
    assert sorted(int(s["labels"]["edgefed.partition-id"]) for s in nodes.values()) == list(
        range(len(devices)))


def test_services_reference_only_services_that_exist() -> None:
    spec = _spec("compose-test")
    services = spec["services"]
    assert "version" not in spec
    assert {"superlink", "dashboard", "serverapp"} <= services.keys()
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= services.keys(), name
        mode = service.get("network_mode", "service:superlink")
        assert mode.removeprefix("service:") in services, name
        for network in service.get("networks", []):
            assert network in spec["networks"], name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("$", "/", ".")) or source in spec["volumes"], name
    assert services["dashboard"]["environment"]["EDGEFED_SUPERLINK"] == "superlink:8000"
    assert services["serverapp"]["network_mode"] == "service:dashboard"


def test_bad_fleets_are_named() -> None:
    catalogue = load_catalogue()
    with pytest.raises(ValueError, match="fleet: unknown fleet 'nope'"):
        generate_compose("nope", catalogue)
    with pytest.raises(ValueError, match="fleet.toaster: unknown device profile"):
        generate_compose({"toaster": 1}, catalogue)
    with pytest.raises(ValueError, match="fleet.rpi5: count must be a positive integer"):
        generate_compose({"rpi5": 0}, catalogue)
    with pytest.raises(ValueError, match="is not PROFILE=COUNT"):
        parse_mix("rpi5=two")
    assert parse_mix("rpi5=2, phone=1,rpi5=1") == {"rpi5": 3, "phone": 1}


def test_compose_command_writes_the_file(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("compose")(compose_command)
    app.command("unused")(lambda: None)  # two commands: typer keeps the `compose` name
    out = tmp_path / "fleet.yml"
    result = CliRunner().invoke(app, ["compose", "--fleet", "rpi5=2,mcu=1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    services = yaml.safe_load(out.read_text())["services"]
    assert [s["labels"]["edgefed.device"] for s in services.values()
            if s["labels"].get("edgefed.role") == "clientapp"].count("mcu") == 1
    bad = CliRunner().invoke(app, ["compose", "--fleet", "nope"])
    assert bad.exit_code == 2 and "unknown fleet 'nope'" in bad.output


def test_image_requirements_leave_out_ray() -> None:
    spec = importlib.util.spec_from_file_location("requirements", ROOT / "deploy/requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.image_requirement("flwr[simulation]==1.42.0") == "flwr==1.42.0"
    assert module.image_requirement("flwr[simulation, dp]>=1") == "flwr[dp]>=1"
    assert module.image_requirement("uvicorn[standard]>=0.30") == "uvicorn[standard]>=0.30"
    assert module.image_requirement("torch==2.13.0") == "torch==2.13.0"
    assert module.image_requirement('Flwr [simulation] == 1.42; python_version >= "3.11"') == (
        'Flwr==1.42; python_version >= "3.11"')  # any PEP 508 spelling


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("fleet", ["compose", "compose-test"])
def test_docker_compose_accepts_it(fleet: str, tmp_path: Path) -> None:
    """docker-compose 1.29 validates a file without ``version`` against the Compose Spec schema;
    the TLS overlay merges onto it; without the dashboard token it refuses to start."""
    path = tmp_path / "docker-compose.yml"
    path.write_text(generate_compose(fleet, load_catalogue()))
    env = {**os.environ, "EDGEFED_DASHBOARD_TOKEN": "t"}
    base = [COMPOSE, "--project-directory", str(ROOT), "-f", str(path)]
    done = subprocess.run([*base, "config", "-q"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    overlay = tmp_path / "docker-compose.tls.yml"
    overlay.write_text(generate_tls_overlay(fleet, load_catalogue()))
    done = subprocess.run([*base, "-f", str(overlay), "config", "-q"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    unset = {k: v for k, v in env.items() if k != "EDGEFED_DASHBOARD_TOKEN"}
    done = subprocess.run([*base, "config", "-q"], env=unset, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "EDGEFED_DASHBOARD_TOKEN" in done.stderr
