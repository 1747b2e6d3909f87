"""The ``edgefed`` CLI: a refused config exits 2, lists every problem on stderr (one
``field: reason`` line each, or ``file:line:column`` for syntax), shows no traceback and writes
nothing — for ``run``, ``sweep`` and every other command that takes a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from common.validate import load_sweep
from server.cli import app, load_experiment
from tests.config_cases import (
    BAD_EXPERIMENTS,
    DUPLICATE_KEYS,
    DUPLICATE_LINES,
    EXAMPLES,
    SYNTAX_ERRORS,
    experiment_text,
    in_sweep,
    sweep_text,
)

runner = CliRunner()


def _refused(result: Result, cwd: Path, given: set[str]) -> list[str]:
    """Exit 2, no traceback, nothing new in ``cwd``; the problem lines printed on stderr."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert {p.name for p in cwd.iterdir()} == given, "something was written"
    lines = result.stderr.splitlines()
    if len(lines) == 1:  # a file that cannot be read or parsed
        assert lines[0].startswith("invalid config: "), result.stderr
        return [lines[0].removeprefix("invalid config: ")]
    assert lines[0].startswith("invalid config ") and lines[0].endswith(":"), result.stderr
    return [line.strip() for line in lines[1:]]


def _fields(lines: list[str]) -> list[str]:
    return [line.split(": ", 1)[0] for line in lines]


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so that a default ``runs/...`` output would show."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize(("name", "text", "position", "words"), SYNTAX_ERRORS,
                         ids=[case[0] for case in SYNTAX_ERRORS])
def test_syntax_error_is_one_line_with_file_line_and_column(
    cwd: Path, command: str, name: str, text: str | bytes, position: str, words: str
) -> None:
    path = _write(cwd, name, text)
    result = runner.invoke(app, [command, str(path), "--out", str(cwd / "out")])
    lines = _refused(result, cwd, {name})
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{position}: "), lines
    assert words in lines[0]


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_missing_file_is_named(cwd: Path, command: str) -> None:
    result = runner.invoke(app, [command, "missing.yaml"])
    assert _refused(result, cwd, set()) == ["missing.yaml: No such file or directory"]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in BAD_EXPERIMENTS],
                         ids=[c.id for c in BAD_EXPERIMENTS])
def test_run_lists_every_wrong_field(cwd: Path, changes: dict, expected: dict[str, str]) -> None:
    path = _write(cwd, "config.yaml", experiment_text(changes))
    result = runner.invoke(app, ["run", str(path), "--out", str(cwd / "out")])
    lines = _refused(result, cwd, {"config.yaml"})
    assert sorted(_fields(lines)) == sorted(expected), lines
    for line in lines:
        field, reason = line.split(": ", 1)
        assert expected[field] in reason, line


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in BAD_EXPERIMENTS],
                         ids=[c.id for c in BAD_EXPERIMENTS])
def test_sweep_lists_every_wrong_field_in_its_own_terms(
    cwd: Path, changes: dict, expected: dict[str, str]
) -> None:
    path = _write(cwd, "sweep.yaml", sweep_text(changes))
    result = runner.invoke(app, ["sweep", str(path), "--out", str(cwd / "out")])
    lines = _refused(result, cwd, {"sweep.yaml"})
    assert sorted(_fields(lines)) == sorted(map(in_sweep, expected)), lines


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_duplicate_keys_are_refused_with_their_lines(cwd: Path, command: str) -> None:
    path = _write(cwd, "config.yaml", DUPLICATE_KEYS)
    result = runner.invoke(app, [command, str(path), "--out", str(cwd / "out")])
    assert _refused(result, cwd, {"config.yaml"}) == [f"{path}:{at}" for at in DUPLICATE_LINES]


@pytest.mark.parametrize("args", [["plan", "--device", "rpi5", "--config"],
                                  ["fleet", "up", "--dir", "fleet", "--config"],
                                  ["dashboard", "--port", "1", "--launch"]],
                         ids=["plan", "fleet-up", "dashboard"])
def test_every_command_taking_a_config_refuses_it_alike(cwd: Path, args: list[str]) -> None:
    changes = {"rounds": -3, "lr": True, "colour": "blue"}
    path = _write(cwd, "config.yaml", experiment_text(changes))
    lines = _refused(runner.invoke(app, [*args, str(path)]), cwd, {"config.yaml"})
    assert sorted(_fields(lines)) == sorted(changes)


def test_plan_checks_last_k_against_the_model_it_is_given(cwd: Path) -> None:
    path = _write(cwd, "config.yaml", experiment_text({"compression": {"last_k": 40}}))
    result = runner.invoke(app, ["plan", "--device", "rpi5", "--model", "resnet18", "--config",
                                 str(path)])
    assert _refused(result, cwd, {"config.yaml"}) == [
        "compression.last_k: 40 exceeds the 21 Conv2d/Linear layers of resnet18 (at most 21)"]


def test_invalid_sweep_base_cannot_set_what_the_grid_sets(cwd: Path) -> None:
    sweep = yaml.safe_load(sweep_text({"fleet": [{"device": "mcu", "count": 2}]}))
    sweep["base"]["compression"] = {"method": "svd"}
    text = yaml.safe_dump(sweep)
    lines = _refused(runner.invoke(app, ["sweep", str(_write(cwd, "s.yaml", text))]), cwd,
                     {"s.yaml"})
    assert sorted(_fields(lines)) == ["base.compression", "base.fleet"]


def test_quickstart_is_valid() -> None:
    config = load_experiment(EXAMPLES / "quickstart.yaml")
    assert config.num_clients == 20 and len({e.device for e in config.fleet}) >= 4
    assert {config.policy_of(e) for e in config.fleet} == {"fit", "fixed"}


def test_credible_example_runs_at_full_scale_with_the_drift_fixes() -> None:
    config = load_experiment(EXAMPLES / "credible.yaml")
    assert config.num_clients == 20 and config.rounds >= 5
    assert config.pretrain_samples is None and config.pretrain_epochs >= 5
    assert config.samples_per_client is None and config.test_samples is None
    assert (config.client_loss, config.lr_schedule) == ("logit-adjusted", "across-rounds")


def test_devices_lists_catalogue_and_fleets() -> None:
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    for name in ("mcu", "rpi-zero", "rpi5", "jetson-nano", "phone", "quickstart", "compose-test"):
        assert name in result.output
    assert "scaled 1/64" in result.output and "board budget" in result.output  # rpi5


def test_plan_rejects_unknown_device() -> None:
    result = runner.invoke(app, ["plan", "--device", "toaster"])
    assert result.exit_code == 2
    assert "device" in result.output and "toaster" in result.output


def test_run_refuses_an_out_folder_holding_an_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").write_text("an earlier run's record\n")
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "out:" in result.stderr and "not empty" in result.stderr
    assert [p.name for p in out.iterdir()] == ["events.jsonl"]
    assert (out / "events.jsonl").read_text() == "an earlier run's record\n"


def test_sweep_refuses_before_its_first_run_if_any_experiment_folder_is_taken(
    tmp_path: Path,
) -> None:
    last = load_sweep(EXAMPLES / "pareto-fl.yaml")[-1].name
    (tmp_path / "out" / last).mkdir(parents=True)
    (tmp_path / "out" / last / "events.jsonl").write_text("{}\n")
    result = runner.invoke(app, ["sweep", str(EXAMPLES / "pareto-fl.yaml"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and last in result.stderr, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == [last]


def test_fleet_status_warns_when_limits_are_rlimit_based(tmp_path: Path) -> None:
    from server import fleet, procs

    limit = procs.MemoryLimit(kind="rlimit", limit_bytes=2**30)
    env = procs.flower_env(tmp_path / "flwr-home")

    def sleeper(role: str, with_limit: bool) -> procs.ManagedProcess:
        return procs.spawn(role, ["sleep", "60"], tmp_path / f"{role}.log", env,
                           limit=limit if with_limit else None)

    state = fleet.FleetState(group="g", port=1, flwr_home=str(tmp_path / "flwr-home"),
                             superlink=sleeper("superlink", False))
    try:
        state.nodes.append(fleet.FleetNode(partition_id=0, device="rpi5",
                                           supernode=sleeper("supernode-0", False),
                                           process=sleeper("node-0", True)))
        fleet.save(tmp_path, state)
        result = runner.invoke(app, ["fleet", "status", "--dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "memory limits are rlimit-based" in " ".join(result.output.split())
    finally:
        procs.stop(state.processes, timeout=5)
    assert not any(p.alive() for p in state.processes)
