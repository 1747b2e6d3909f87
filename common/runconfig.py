"""The run-config of an edgefed Flower run: what ``edgefed run`` hands to the ServerApp and
every ClientApp (keys of ``[tool.flwr.app.config]``), and the experiment it carries."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from common.config import ExperimentConfig
from common.validate import load_config

DEFAULT_EXPERIMENT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


@dataclass(frozen=True)
class RunSettings:
    """The run-config of an edgefed Flower run (keys of ``[tool.flwr.app.config]``).

    An empty ``config-json`` (a plain ``flwr run .``) means the quickstart experiment.
    """

    config_json: str
    run_id: str
    out_dir: str
    report_url: str
    report_token: str
    devices: str | None


def settings_of(run_config: dict) -> RunSettings:
    config_json = str(run_config.get("config-json", ""))
    if not config_json:
        config_json = load_config(DEFAULT_EXPERIMENT).model_dump_json()
    return RunSettings(
        config_json=config_json,
        run_id=str(run_config.get("run-id", "")) or "flwr",
        out_dir=str(run_config.get("out-dir", "")) or "runs/flwr",
        report_url=str(run_config.get("report-url", "")),
        report_token=str(run_config.get("report-token", "")),
        devices=str(run_config.get("devices", "")) or None,
    )


@lru_cache(maxsize=4)
def experiment(config_json: str) -> ExperimentConfig:
    """The experiment carried in the run-config (parsed once per process)."""
    return ExperimentConfig.model_validate_json(config_json)
