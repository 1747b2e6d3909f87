"""The ``edgefed`` CLI: invalid configs exit 2 naming the field and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from common.config import load_sweep
from server.cli import app, load_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def _config(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    data.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": "alexnet"}, "model"),
        ({"fleet": [{"device": "toaster", "count": 2}]}, "fleet[0].device"),
        ({"compression": {"method": "hosvd", "eps": 1.5}}, "compression.eps"),
        ({"compression": {"method": "hosvd", "eps": 0.0}}, "compression.eps"),
        ({"fleet": [{"device": "rpi5", "count": -1}]}, "fleet.0.count"),
        ({"min_train_clients": 50}, "min_train_clients"),
        ({"fleet": [{"device": "rpi5", "count": 1500}, {"device": "mcu", "count": 600}]},
         "fleet"),
        ({"partitioner": "pathological", "classes_per_client": 11}, "classes_per_client"),
        ({"rounds": 0}, "rounds"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_config_exits_2_naming_the_field(
    tmp_path: Path, changes: dict, field: str
) -> None:
    path = _config(tmp_path, **changes)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "invalid config" in result.output
    assert field in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_unreadable_config_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "missing.yaml" in result.output


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


def test_quickstart_is_valid() -> None:
    config = load_experiment(EXAMPLES / "quickstart.yaml")
    assert config.num_clients == 20 and len({e.device for e in config.fleet}) >= 4
    assert {config.policy_of(e) for e in config.fleet} == {"fit", "fixed"}


def test_pareto_sweep_expands_to_methods_x_budgets() -> None:
    experiments = load_sweep(EXAMPLES / "pareto-fl.yaml")
    assert len(experiments) == 15 and len({e.name for e in experiments}) == 15
    assert {e.compression.method for e in experiments} == {
        "vanilla", "gradfilter", "svd", "hosvd"}
    assert len({e.fleet[0].device for e in experiments}) == 3


def test_invalid_sweep_exits_2(tmp_path: Path) -> None:
    data = yaml.safe_load((EXAMPLES / "pareto-fl.yaml").read_text())
    data["methods"][0]["eps"] = 2.0
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "methods.0.eps" in result.output
    assert not (tmp_path / "out").exists()
