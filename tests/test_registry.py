"""The method registry is the one list of methods: every consumer is derived from it, and no
product source holds a list of method names of its own. Likewise the data sets' SPECS."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from client.planner import candidates
from common.compression import wrap_last_layers, wrapped_layers
from common.compression.registry import METHODS, RADII, REGISTRY, method_spec
from common.config import CompressionConfig, ConfigError, DatasetName, ExperimentConfig, Method
from common.datasets import SPECS, dataset_spec
from common.fetch import SOURCES
from common.validate import check_experiment

REPO = Path(__file__).resolve().parents[1]
REGISTRY_FILE = REPO / "common" / "compression" / "registry.py"
# the product: bench/ picks the variants a figure shows and tests/ the cases they test
PRODUCT = ("common", "client", "server", "deploy")
NAMES = set(METHODS)


def _literal_lists(path: Path) -> list[tuple[int, list[str]]]:
    """(line, names) of every tuple/list/set literal and dict whose keys hold two or more
    method names as string constants."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        else:
            continue
        names = [i.value for i in items if isinstance(i, ast.Constant) and i.value in NAMES]
        if len(set(names)) >= 2:
            found.append((node.lineno, names))
    return found


def _js_names(path: Path) -> set[str]:
    """Method names a script spells out, as strings or object keys."""
    pattern = "|".join(METHODS)
    found = re.findall(rf"""["'`]({pattern})["'`]|\b({pattern})\s*:""", path.read_text())
    return {a or b for a, b in found}


def _sources(pattern: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             *(f"{top}/{pattern}" for top in PRODUCT)],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in listed.split() if (REPO / line).is_file()]


def test_the_scan_finds_a_list_of_methods_where_there_is_one() -> None:
    """The scans below are not vacuous: they see the registry's own fallback tuples and a
    script that names methods."""
    assert any(len(names) >= 2 for _, names in _literal_lists(REGISTRY_FILE))
    assert len(_sources("*.py")) > 30 and _sources("*.js")


def test_no_product_source_lists_methods_but_the_registry(tmp_path: Path) -> None:
    lists = {str(p.relative_to(REPO)): found for p in _sources("*.py")
             if p != REGISTRY_FILE and (found := _literal_lists(p))}
    assert lists == {}, f"lists of methods outside the registry: {lists}"
    scripts = {str(p.relative_to(REPO)): names for p in _sources("*.js")
               if (names := _js_names(p))}
    assert scripts == {}, f"scripts naming methods (read GET /api/methods): {scripts}"
    sample = tmp_path / "copy.js"
    sample.write_text('const C = { vanilla: "#000", "svd": 1 };')
    assert _js_names(sample) == {"vanilla", "svd"}


def test_config_schema_is_the_registry() -> None:
    assert get_args(Method) == METHODS
    schema = ExperimentConfig.model_json_schema()["$defs"]["CompressionConfig"]["properties"]
    assert tuple(schema["method"]["enum"]) == METHODS
    assert tuple(schema["radius"]["enum"]) == RADII


def test_config_datasets_are_the_specs() -> None:
    assert get_args(DatasetName) == tuple(SPECS)
    assert tuple(SOURCES) == tuple(SPECS)  # where each data set's files come from
    for name, spec in SPECS.items():
        assert spec.name == name and dataset_spec(name) is spec


def test_the_schema_does_not_load_torch() -> None:
    code = ("import sys, common.config, server.dashboard.api.meta; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("method", METHODS)
def test_every_entry_wraps_with_what_the_config_gives(method: str) -> None:
    """The config's parameters for the method are exactly those the entry takes, and the
    entry's builder is what the wrapped layers train with."""
    compression = CompressionConfig(method=method, last_k=2)
    params = compression.wrap_params()
    assert set(params) <= set(method_spec(method).param_names)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5))
    wrap_last_layers(model, method, 2, **params)
    built = method_spec(method).build(params, "x", None)
    assert all(type(m.method) is type(built) for _, m in wrapped_layers(model))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("method", METHODS)
def test_planner_falls_back_along_the_registry(method: str) -> None:
    config = ExperimentConfig(fleet=[{"device": "rpi5", "count": 2}], batch_size=2,
                              compression={"method": method, "last_k": 1})
    tried = list(dict.fromkeys(c.method for c in candidates(config)))
    assert tried == [method, *REGISTRY[method].cheaper]
    for candidate in candidates(config):
        assert set(candidate.wrap_kwargs()) <= set(method_spec(candidate.method).param_names)


@pytest.mark.parametrize("method", [m for m in METHODS if not method_spec(m).takes("rank")])
def test_a_rank_for_a_method_without_ranks_is_an_error(method: str) -> None:
    with pytest.raises(ValidationError, match=f"rank\n.*method '{method}' takes no rank"):
        CompressionConfig(method=method, rank=4)
    with pytest.raises(ConfigError) as refused:
        check_experiment({"fleet": [{"device": "rpi5", "count": 2}],
                          "compression": {"method": method, "rank": 4}})
    assert [p.field for p in refused.value.problems] == ["compression.rank"]


@pytest.mark.parametrize("method", [m for m in METHODS if method_spec(m).takes("rank")])
def test_a_rank_replaces_eps(method: str) -> None:
    assert CompressionConfig(method=method, rank=4, eps=0.9).wrap_params() == {"rank": 4}
    assert CompressionConfig(method=method, rank=4).tag() == f"{method}-k4-rank4"


def test_wrap_rejects_what_the_entry_does_not_take() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['radius'\]"):
        wrap_last_layers(model, "svd", 1, radius=2)
    with pytest.raises(ValueError, match="method='nope' is not one of"):
        wrap_last_layers(model, "nope", 1)
