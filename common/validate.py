"""The one validation path of experiments and sweeps: the CLI, the dashboard API and its form.

A config is refused with a :class:`~common.config.ConfigError` that lists every problem found,
each named by its dotted field (``rounds``, ``compression.last_k``, ``fleet.0.device``):

1. the schema (strict types, bounds, unknown fields, finite numbers): every field at once;
2. checks across fields (:meth:`ExperimentConfig.cross_problems`), device names against the
   catalogue, and ``compression.last_k`` against the model's number of Conv2d/Linear layers.
   These also run when some fields failed step 1: the config is re-validated without the failed
   fields (their defaults, or for required ones a stand-in, take their place) and a check is
   reported only if none of the fields it reads failed, so a default or a stand-in never
   produces a problem of its own.

A sweep's problems are named in the sweep file's terms (``methods.2.last_k``,
``fleets.mcu-budget.0.count``, ``base.rounds``).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from common.config import (
    DEFER_CROSS_CHECKS,
    ConfigError,
    ExperimentConfig,
    Problem,
    SweepConfig,
)
from common.configfile import read
from common.devices import Catalogue, fleet_errors, load_catalogue

Check = tuple[Problem, tuple[str, ...]]  # a problem and the fields its check reads
_DROP = object()
M = TypeVar("M", bound=BaseModel)


@lru_cache(maxsize=64)
def layer_count(model: str, width: float, image_size: int, dataset: str) -> int:
    """How many Conv2d/Linear layers ``compression.last_k`` can choose from: the layers of
    ``common.compression.trainable_layers`` in the model an experiment builds.

    The model is built once per argument tuple (cached), on the CPU, without touching torch's
    global random state; ``bench/layer_count.py`` measures what that costs.
    """
    import torch  # the schema alone never needs torch

    from common.compression import trainable_layers
    from common.data import dataset_spec
    from common.models import build_model

    spec = dataset_spec(dataset)
    with torch.random.fork_rng(devices=[]):
        built = build_model(model, spec.num_classes, spec.channels, image_size, width)
    return len(trainable_layers(built))


def warm_up() -> None:
    """Import torch and the models and count the default experiment's layers, so that the first
    validation a server answers does not pay for them (seconds on a loaded machine)."""
    defaults = ExperimentConfig.model_fields
    layer_count(*(defaults[name].default for name in ("model", "width", "image_size", "dataset")))


LAYER_READS = ("compression.last_k", "model", "width", "image_size", "dataset")


def _layer_checks(config: ExperimentConfig) -> list[Check]:
    count = layer_count(config.model, config.width, config.image_size, config.dataset)
    last_k = config.compression.last_k
    if last_k <= count:
        return []
    return [(Problem("compression.last_k", f"{last_k} exceeds the {count} Conv2d/Linear layers "
                     f"of {config.model} (at most {count})"), LAYER_READS)]


def _catalogue_checks(config: ExperimentConfig, catalogue: Catalogue) -> list[Check]:
    return [(Problem(_dotted(error.field), str(error).removeprefix(f"{error.field}: ")),
             (_dotted(error.field),)) for error in fleet_errors(config, catalogue)]


def _dotted(field: str) -> str:
    """``fleet[0].device`` -> ``fleet.0.device``."""
    return field.replace("[", ".").replace("]", "")


def _shown(value: object) -> str:
    if not isinstance(value, bool | int | float | str):
        return f"a {type(value).__name__}"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``list[X]``, ``dict[str, X]``, ``X|None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _known_fields(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed where ``loc``'s last part was found."""
    model: type[BaseModel] | None = schema
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        model = _model_of(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def problems_of(error: ValidationError, schema: type[BaseModel]) -> list[Problem]:
    """Pydantic's errors as problems: dotted field, reason with the value given."""
    problems = []
    for e in error.errors(include_url=False):
        loc = tuple(e["loc"])
        field = ".".join(map(str, loc))
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_fields(schema, loc), n=1)
            reason = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif e["type"] == "missing":
            reason = "required"
        else:  # a model-level check (loc ()) was given the whole mapping: not worth showing
            given = f" (got {_shown(e['input'])})" if loc else ""
            reason = e["msg"].removeprefix("Value error, ") + given
        problems.append(Problem(field, reason))
    return problems


STAND_IN_ENTRY = {"device": "stand-in", "count": 1}
STAND_INS = {  # required fields (list items as *) that _without replaces instead of dropping
    "fleet": [STAND_IN_ENTRY], "fleet.*": STAND_IN_ENTRY,
    "fleet.*.device": STAND_IN_ENTRY["device"], "fleet.*.count": STAND_IN_ENTRY["count"],
}


def _without(data: dict, fields: set[str]) -> dict | None:
    """``data`` less every dotted ``field``; None when one of them cannot be taken out.

    A required field that failed gets a stand-in (:data:`STAND_INS`), so that the checks that
    do not read it can run; those that read it are skipped (:func:`_reads_any`)."""
    rest = copy.deepcopy(data)
    for field in fields:
        *parents, last = field.split(".")
        stand_in = STAND_INS.get(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", field), _DROP)
        node: object = rest
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if stand_in is not _DROP:
                node[int(last) if isinstance(node, list) else last] = copy.deepcopy(stand_in)
            elif isinstance(node, list):
                return None  # taking an item out would renumber the others
            else:
                node.pop(last, None)  # absent when it is a missing required field
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return rest


def _reads_any(reads: tuple[str, ...], failed: set[str]) -> bool:
    return any(f == r or f.startswith(r + ".") or r.startswith(f + ".")
               for f in failed for r in reads)


def _require_mapping(data: object, source: str) -> None:
    if not isinstance(data, dict):
        got = "nothing" if data is None else _shown(data)
        raise ConfigError([Problem("", f"{source or 'config'}: expected a mapping of fields at "
                                   f"the top level, got {got}")], source)


def _schema_pass(schema: type[M], data: dict) -> tuple[M | None, list[Problem]]:
    """``data`` validated by ``schema`` (cross-field checks deferred) and its problems; after a
    failure, the model is ``data`` validated without the failed fields (None if it fails too),
    for the checks that do not read them."""
    context = {DEFER_CROSS_CHECKS: True}
    try:
        return schema.model_validate(data, context=context), []
    except ValidationError as error:
        problems = problems_of(error, schema)
    rest = _without(data, {p.field for p in problems})
    try:
        return (schema.model_validate(rest, context=context) if rest is not None else None,
                problems)
    except ValidationError:
        return None, problems


def check_experiment(data: object, catalogue: Catalogue | None = None,
                     source: str = "") -> ExperimentConfig:
    """``data`` (parsed YAML/JSON) as a validated experiment, or :class:`ConfigError` listing
    every problem. ``catalogue`` defaults to :func:`load_catalogue`; ``source`` names the input
    in the error."""
    _require_mapping(data, source)
    config, problems = _schema_pass(ExperimentConfig, data)
    if config is not None:
        failed = {p.field for p in problems}
        checks = [*config.cross_problems(),
                  *_catalogue_checks(config, catalogue or load_catalogue())]
        if not _reads_any(LAYER_READS, failed):  # builds a model: only with valid inputs
            checks += _layer_checks(config)
        problems += [problem for problem, reads in checks if not _reads_any(reads, failed)]
    if problems:
        raise ConfigError(problems, source)
    return config


def _in_sweep(problem: Problem, method: int, fleet: str) -> Problem:
    """An experiment's problem named by the sweep field it comes from."""
    head, _, rest = problem.field.partition(".")
    if head == "compression":
        return Problem(".".join(filter(None, (f"methods.{method}", rest))), problem.reason)
    if head == "fleet":
        return Problem(".".join(filter(None, (f"fleets.{fleet}", rest))), problem.reason)
    return Problem(f"base.{problem.field}" if problem.field else "base", problem.reason)


def check_sweep(data: object, catalogue: Catalogue | None = None,
                source: str = "") -> list[ExperimentConfig]:
    """``data`` as the validated experiments of a sweep (see :class:`SweepConfig`), or
    :class:`ConfigError` listing every problem of the sweep and of each combination (as for an
    experiment, a combination is checked without the sweep fields that failed)."""
    _require_mapping(data, source)
    sweep, problems = _schema_pass(SweepConfig, data)
    experiments = []
    if sweep is not None:
        problems += [Problem(f"base.{key}", f"set by the sweep's {by}, not by its base")
                     for key, by in (("compression", "methods"), ("fleet", "fleets"))
                     if key in sweep.base]
        failed = {p.field for p in problems}
        for method, fleet, fields in sweep.combinations():
            try:
                experiments.append(check_experiment(fields, catalogue or load_catalogue()))
            except ConfigError as error:
                found = (_in_sweep(p, method, fleet) for p in error.problems)
                problems += [p for p in found
                             if p not in problems and not _reads_any((p.field,), failed)]
    if problems:
        raise ConfigError(problems, source)
    return experiments


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment from a YAML or JSON file and validate it; nothing is written.

    Raises :class:`ConfigError` naming the file (unreadable, syntax) or every wrong field.
    """
    return check_experiment(read(path), source=str(path))


def load_sweep(path: str | Path) -> list[ExperimentConfig]:
    """Read a :class:`SweepConfig` file and expand it into validated experiments."""
    return check_sweep(read(path), source=str(path))
