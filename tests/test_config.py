"""``common.validate`` and ``common.configfile``: the one path every config goes through (the
CLI and API tests check what a user sees; these check the pieces)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from common.compression import trainable_layers
from common.config import ConfigError, ExperimentConfig, Problem
from common.configfile import parse, read
from common.data import dataset_spec
from common.models import MODEL_NAMES, build_model
from common.validate import check_experiment, layer_count, load_config, load_sweep
from tests.config_cases import EXAMPLES, experiment


def _problems(data: object) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        check_experiment(data)
    return caught.value.problems


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    if "methods" in yaml.safe_load(path.read_text()):
        assert load_sweep(path)
    else:
        assert load_config(path).name


def test_a_checked_config_survives_flowers_json_round_trip() -> None:
    """The ServerApp re-validates the JSON in strict mode: nothing may be refused there."""
    for config in (load_config(EXAMPLES / "quickstart.yaml"),
                   *load_sweep(EXAMPLES / "pareto-fl.yaml")):
        assert ExperimentConfig.model_validate_json(config.model_dump_json()) == config


def test_the_schema_alone_still_refuses_cross_field_errors() -> None:
    with pytest.raises(ValidationError, match="min_train_clients: 50 exceeds"):
        ExperimentConfig.model_validate(experiment({"min_train_clients": 50}))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_count_is_the_built_models(name: str) -> None:
    spec = dataset_spec("cifar100")
    built = build_model(name, spec.num_classes, spec.channels, 40, 0.75)
    state = torch.random.get_rng_state()
    assert layer_count(name, 0.75, 40, "cifar100") == len(trainable_layers(built))
    assert torch.equal(torch.random.get_rng_state(), state), "global RNG was consumed"
    hits = layer_count.cache_info().hits
    layer_count(name, 0.75, 40, "cifar100")
    assert layer_count.cache_info().hits == hits + 1


def test_a_check_reading_a_failed_field_is_not_reported() -> None:
    """``dataset`` failed: its default must not make ``classes_per_client`` look wrong."""
    problems = _problems(experiment({"dataset": "imagenet", "partitioner": "pathological",
                                     "classes_per_client": 11}))
    assert [p.field for p in problems] == ["dataset"]


def test_checks_that_do_not_need_a_failed_field_still_run() -> None:
    data = experiment({"compression": {"last_k": 60}, "min_train_clients": 500})
    del data["fleet"]
    problems = _problems(data)
    assert [p.field for p in problems] == ["fleet", "compression.last_k"]  # not min_train_...
    assert problems[0] == Problem("fleet", "required")


def test_every_wrong_part_of_a_fleet_entry_is_named() -> None:
    """A wrong count does not hide a wrong device name, even in the same entry; the fleet's
    size is not judged while one of its counts is wrong."""
    problems = _problems(experiment({"min_train_clients": 99, "fleet": [
        {"device": "toaster", "count": 0}, 7, {"device": "mcu", "count": 2}]}))
    assert [p.field for p in problems] == ["fleet.0.count", "fleet.1", "fleet.0.device"]


def test_unknown_fields_suggest_the_closest_one() -> None:
    problems = _problems(experiment({"compression": {"lastk": 2}, "rounds_": 3}))
    assert [str(p) for p in problems] == [
        "compression.lastk: unknown field (did you mean 'last_k'?)",
        "rounds_: unknown field (did you mean 'rounds'?)",
    ]


def test_error_text_is_one_problem_per_line() -> None:
    error = ConfigError([Problem("lr", "too big"), Problem("", "f.yaml:1:2: bad")], "f.yaml")
    assert str(error) == "lr: too big\nf.yaml:1:2: bad" and error.source == "f.yaml"


@pytest.mark.parametrize(("text", "message"), [
    (b"", "config: expected a mapping of fields at the top level, got nothing"),
    (b"- 1\n", "config: expected a mapping of fields at the top level, got a list"),
    (b"just words\n", 'config: expected a mapping of fields at the top level, got "just words"'),
])
def test_a_file_that_is_not_a_mapping_is_refused(text: bytes, message: str) -> None:
    assert [str(p) for p in _problems(parse(text, "f.yaml", "yaml"))] == [message]


def test_yaml_merge_keys_may_be_overridden_but_keys_not_repeated() -> None:
    merged = b"base: &b {lr: 1, rounds: 2}\nx:\n  <<: *b\n  lr: 3\n"
    assert parse(merged, "m.yaml", "yaml")["x"] == {"lr": 3, "rounds": 2}
    with pytest.raises(ConfigError, match=r"m.yaml:3:3: duplicate key 'lr' \(first given at "
                                          r"line 2\)"):
        parse(b"x:\n  lr: 1\n  lr: 2\n", "m.yaml", "yaml")


@pytest.mark.parametrize(("raw", "fmt"), [(b"a: " + b"[" * 5000, "yaml"),
                                          (b'{"a": ' + b"[" * 100_000, "json")])
def test_deep_nesting_is_refused_not_crashed(raw: bytes, fmt: str) -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse(raw, "deep", fmt)


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    for path, why in ((tmp_path / "missing.yaml", "No such file or directory"),
                      (tmp_path, "Is a directory")):
        with pytest.raises(ConfigError) as caught:
            read(path)
        assert str(caught.value) == f"{path}: {why}"


def test_unprintable_characters_name_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"^c.yaml:2:7: character U\+0007 is not allowed"):
        parse(b"a: 1\nname: \x07\n", "c.yaml", "yaml")
