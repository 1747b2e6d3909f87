"""The set-up `make run` / `make test` do before anything else: Debian packages
(deploy/debian-packages.sh, driven by the real dpkg-query; nothing is installed or removed here),
the data step, and the browser test failing rather than skipping when `make test` requires it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "debian-packages.sh"
BASH = shutil.which("bash") or "/bin/bash"
PRESENT = ["dataset-fashion-mnist", "chromium", "chromium-driver", "docker-compose"]
ABSENT = "edgefed-no-such-package"

debian = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")


def _script(*args: str, path: str | None = None, user: int | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path if path is not None else os.environ["PATH"]}
    prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}",
                                      "--clear-groups"]
    return subprocess.run([*prefix, BASH, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
                          capture_output=True, text=True)
    return done.stdout.startswith("ii")


@debian
def test_present_packages_cost_one_query_and_install_nothing() -> None:
    if not all(_installed(p) for p in PRESENT):
        pytest.skip("this machine lacks one of the packages make test installs")
    done = _script(*PRESENT)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"system: installed: {' '.join(PRESENT)}\n", "")


@debian
@pytest.mark.skipif(os.geteuid() != 0, reason="the install path needs root")
def test_only_the_missing_packages_are_installed() -> None:
    done = _script("--dry-run", "dpkg", ABSENT)  # dpkg is always installed on Debian
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("system: would run: apt-get update -qq && apt-get install -y -qq "
                           f"--no-install-recommends {ABSENT}\n")


@debian
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run as another user")
def test_without_root_the_message_names_what_to_install() -> None:
    done = _script("dpkg", ABSENT, user=65534)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr == (f"system: missing Debian packages: {ABSENT} (cannot install them "
                           f"here: not root); install them with: sudo apt-get install {ABSENT}\n")


@debian
def test_without_apt_get_or_dpkg_the_message_names_what_to_install(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # a PATH holding dpkg-query alone: no apt-get
        (tmp_path / "dpkg-query").symlink_to(shutil.which("dpkg-query"))
        done = _script("dpkg", ABSENT, path=str(tmp_path))
        assert done.returncode == 0
        assert f"{ABSENT} (cannot install them here: no apt-get)" in done.stderr
    done = _script("dpkg", ABSENT, path=str(tmp_path / "empty"))
    assert (done.returncode, done.stderr) == (
        0, f"system: not a Debian system (no dpkg-query): install the equivalents of: dpkg "
           f"{ABSENT}\n")
    assert _script().returncode == 2


def _dry_run(*args: str) -> list[str]:
    """The commands ``make -n`` prints, as a top-level make would (this test may itself run
    under ``make test``, whose MAKEFLAGS/MAKELEVEL would add "Entering directory" lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_make_sets_up_before_running_and_requires_the_browser(tmp_path: Path) -> None:
    """The order make runs things in, per goal (a dry run with the virtualenv taken as made)."""
    bin_dir = str(Path(sys.executable).parent)

    def commands(goal: str) -> list[str]:
        return _dry_run("-o", ".venv/.installed", goal, f"BIN={bin_dir}")

    system = "deploy/debian-packages.sh dataset-fashion-mnist"
    fetch = f"{bin_dir}/python -m common.fetch"
    assert commands("test") == [
        f"{system} chromium chromium-driver docker-compose", fetch, f"{bin_dir}/ruff check .",
        f"EDGEFED_REQUIRE_BROWSER=1 {bin_dir}/pytest -q"]
    assert commands("run")[:2] == [system, fetch]
    assert commands("compose-test")[:2] == [
        f"{system} docker-compose docker.io debootstrap debian-archive-keyring", fetch]
    # an interpreter without ensurepip (Debian's python3 alone) gets python3-venv first
    fresh = _dry_run("run", "PY=false", f"VENV={tmp_path}/venv")  # a virtualenv not yet made
    assert fresh[:2] == [f"{system} python3-venv", f"false -m venv {tmp_path}/venv"]


@pytest.mark.parametrize(("require", "outcome"), [("1", "1 error"), ("", "1 skipped")])
def test_missing_browser_fails_when_required(require: str, outcome: str) -> None:
    env = {**os.environ, "EDGEFED_CHROMIUM": "/nonexistent/chromium",
           "EDGEFED_REQUIRE_BROWSER": require}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_browser.py::test_run_page_follows_events_live"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert outcome in done.stdout, done.stdout[-2000:]
    assert done.returncode == (1 if require else 0)
    assert "/nonexistent/chromium not found: install Debian's chromium" in done.stdout


def _processes_with(flwr_home: Path) -> list[str]:
    """Command lines of live (not zombie) processes whose environment has this ``FLWR_HOME``:
    the SuperLink, its SuperExecs, the simulation and its Ray processes all inherit it."""
    needle = f"FLWR_HOME={flwr_home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if needle in environ and state != "Z":
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.e2e
def test_flwr_run_script_runs_the_app_and_leaves_nothing_running(tmp_path: Path) -> None:
    """deploy/flwr-run.sh: plain ``flwr run .`` of a 3-device experiment on its own SuperLink,
    events in the fresh out-dir it names, and no Flower or Ray process left afterwards."""
    import yaml

    from tests.dashboard_support import tiny_config

    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(tiny_config()))
    flwr_home = tmp_path / "flwr-home"
    env = {**os.environ, "EXPERIMENT": str(experiment), "FLWR_HOME": str(flwr_home),
           "VENV_BIN": str(Path(sys.executable).parent)}
    script = subprocess.Popen([BASH, str(REPO / "deploy" / "flwr-run.sh")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        output, _ = script.communicate(timeout=480)
    finally:
        if script.poll() is None:  # its EXIT trap stops the SuperLink
            os.killpg(script.pid, 15)
            script.wait(timeout=30)
    assert script.returncode == 0, output[-3000:]
    header = next(line for line in output.splitlines() if line.startswith("flwr-run: SuperLink"))
    assert ", 3 SuperNodes, out-dir " in header
    out = Path(header.rsplit("out-dir ", 1)[1])
    try:
        assert out.parent == REPO / "runs" and out.name.startswith("flwr-")
        rounds = [json.loads(line)["round"] for line in
                  (out / "events.jsonl").read_text().splitlines()]
        assert {r["round"] for r in rounds if r} >= {1, 2}
        assert "uv sync" not in output and not (flwr_home / "runtime-envs").exists()
        assert _processes_with(flwr_home) == []
    finally:
        shutil.rmtree(out, ignore_errors=True)
