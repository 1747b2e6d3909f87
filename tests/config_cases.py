"""Bad configs, one class each, shared by the CLI tests and the dashboard API tests: both must
refuse them with the same fields named (``common.validate`` is their one path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAN, INF = float("nan"), float("inf")


class BadConfig(NamedTuple):
    id: str
    changes: dict[str, Any]  # top-level fields replaced in a valid experiment
    expected: dict[str, str]  # every field named -> a fragment of its reason


BAD_EXPERIMENTS = [
    BadConfig("several-fields", {"rounds": -3, "clients": 4, "method": "svd", "lr": True},
              {"rounds": "greater than or equal to 1", "clients": "unknown field",
               "method": "unknown field", "lr": "valid number (got true)"}),
    BadConfig("last-k-mobilenetv2", {"model": "mobilenetv2", "compression": {"last_k": 60}},
              {"compression.last_k": "60 exceeds the 53 Conv2d/Linear layers of mobilenetv2"}),
    BadConfig("last-k-smallcnn", {"model": "smallcnn", "compression": {"last_k": 30}},
              {"compression.last_k": "30 exceeds the 5 Conv2d/Linear layers of smallcnn"}),
    BadConfig("strict-types", {"lr": True, "local_steps": "3", "batch_size": 8.0},
              {"lr": "valid number (got true)", "local_steps": 'valid integer (got "3")',
               "batch_size": "valid integer (got 8.0)"}),
    BadConfig("nan-inf", {"lr": NAN, "alpha": INF, "compression": {"eps": -INF}},
              {"lr": "finite number (got NaN)", "alpha": "finite number (got Infinity)",
               "compression.eps": "finite number (got -Infinity)"}),
    BadConfig("cross-field-and-others",
              {"min_train_clients": 50, "partitioner": "pathological", "classes_per_client": 11,
               "seed": -1, "compression": {"last_k": 99, "method": "zip"}},
              {"min_train_clients": "50 exceeds the fleet's", "classes_per_client":
               "11 exceeds the 10 classes of fashion-mnist", "seed": "greater than or equal",
               "compression.last_k": "less than or equal to 64",
               "compression.method": "Input should be"}),
]
DUPLICATE_KEYS = "lr: 0.1\nrounds: 2\ncompression: {method: svd, method: hosvd}\nlr: 0.2\n"
DUPLICATE_LINES = ["3:28: duplicate key 'method' (first given at line 3)",
                   "4:1: duplicate key 'lr' (first given at line 1)"]
SYNTAX_ERRORS = [  # (file name, content, line:column, words of the message)
    ("unclosed.yaml", "name: x\nfleet: [{device: mcu, count: 2}\nrounds: 3\n", "3:1",
     "expected ',' or ']'"),
    ("tabs.yaml", "name: x\nfleet:\n\t- {device: mcu, count: 2}\n", "3:1",
     "found character '\\t'"),
    ("tag.yaml", "name: !!python/object/apply:os.system [ls]\n", "1:7",
     "could not determine a constructor for the tag"),
    ("latin1.yaml", b"name: caf\xe9\n", "1:10", "not UTF-8 text"),
    ("broken.json", '{"name": "x",\n "rounds": 3,,\n}', "2:14", "Expecting property name"),
]


def experiment(changes: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The quickstart (or ``base``) with ``changes``; a ``compression`` change is merged."""
    config = dict(base or yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text()))
    for key, value in changes.items():
        config[key] = {**config.get("compression", {}), **value} if key == "compression" else value
    return config


def experiment_text(changes: dict[str, Any]) -> str:
    return yaml.safe_dump(experiment(changes), sort_keys=False)


def sweep_text(changes: dict[str, Any]) -> str:
    """The shipped Pareto sweep with ``changes`` in its base (a ``compression`` change goes
    into its first method)."""
    sweep = yaml.safe_load((EXAMPLES / "pareto-fl.yaml").read_text())
    for key, value in changes.items():
        if key == "compression":
            sweep["methods"][0] = {**sweep["methods"][0], **value}
        else:
            sweep["base"][key] = value
    return yaml.safe_dump(sweep, sort_keys=False)


def in_sweep(field: str) -> str:
    """An experiment field as :func:`sweep_text` places it (the first method, the base)."""
    if field.startswith("compression."):
        return "methods.0." + field.removeprefix("compression.")
    return "base." + field
