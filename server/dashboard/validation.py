"""422 replies that name the field: catalogue checks, model-level checks, storable numbers.

Pydantic reports a model-level check (``min_train_clients: 9 exceeds ...``) at the model's own
location; :func:`locate` moves it onto the field the message starts with, so the form can show
it beside that field. Numbers the schema leaves unbounded are checked against what the database
can hold (64-bit integers, finite floats) before anything is written.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi.exceptions import RequestValidationError

from common.config import ExperimentConfig
from common.devices import FleetError, load_catalogue, validate_fleet
from common.events import Event

_FIELD = re.compile(r"^(?:Value error, )?([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): ")
_PART = re.compile(r"([a-z_]+)|\[(\d+)\]")
INT64 = 2**63
ECHO_DEPTH = 16
TOO_DEEP = "(nested too deeply to echo)"


def field_loc(path: str) -> tuple[str | int, ...]:
    """``"fleet[0].device"`` -> ``("fleet", 0, "device")``."""
    return tuple(int(index) if index else name for name, index in _PART.findall(path))


def locate(error: dict) -> dict:
    """Append the field a model-level message names to the error's location."""
    match = _FIELD.match(str(error.get("msg", "")))
    if error.get("type") != "value_error" or match is None:
        return error
    loc, field = tuple(error["loc"]), field_loc(match.group(1))
    return error if loc[-len(field):] == field else {**error, "loc": (*loc, *field)}


def json_safe(value: Any, depth: int = ECHO_DEPTH) -> Any:
    """``value`` as JSON can carry it back: non-finite floats as strings, tuples as lists, and
    containers nested deeper than ``depth`` replaced by :data:`TOO_DEEP` (a refused input is
    echoed in its 422, and an input can nest ~1,000 levels within the body limit: echoing all
    of it would exhaust the stack)."""
    if isinstance(value, dict | list | tuple):
        if depth <= 0:
            return TOO_DEEP
        if isinstance(value, dict):
            return {key: json_safe(item, depth - 1) for key, item in value.items()}
        return [json_safe(item, depth - 1) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _error(loc: tuple, msg: str, value: Any = None) -> dict:
    return {"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": value}


def invalid(loc: tuple, msg: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError([_error(loc, msg, value)])


def checked_config(config: ExperimentConfig) -> ExperimentConfig:
    """Schema-valid config whose fleet also names only catalogue devices."""
    try:
        validate_fleet(config, load_catalogue())
    except FleetError as error:
        raise invalid(field_loc(error.field), str(error)) from None
    return config


def storable_errors(value: Any, loc: tuple = ("body",), unsigned: frozenset = frozenset()
                    ) -> list[dict]:
    """Integers outside int64 (uint64 for the paths in ``unsigned``) and non-finite floats."""
    if isinstance(value, dict):
        return [e for key, item in value.items()
                for e in storable_errors(item, (*loc, key), unsigned)]
    if isinstance(value, list):
        return [e for i, item in enumerate(value)
                for e in storable_errors(item, (*loc, i), unsigned)]
    bad = None
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        low, high = (0, 2**64) if loc[1:] in unsigned else (-INT64, INT64)
        bad = None if low <= value < high else f"integer out of range [{low}, {high})"
    elif isinstance(value, float) and not math.isfinite(value):
        bad = "must be a finite number"
    return [] if bad is None else [{"type": "value_error", "loc": loc, "msg": bad, "input": value}]


def event_errors(event: Event, run_id: str) -> list[dict]:
    """Why the database must not take ``event`` for run ``run_id`` (empty: it may): another
    run's id, not exactly one part set, numbers out of storable range."""
    if event.run_id != run_id:
        return [_error(("run_id",), f"run_id: {event.run_id!r} does not match the URL's "
                       f"{run_id!r}", event.run_id)]
    if sum(part is not None for part in (event.client, event.round, event.state)) != 1:
        return [_error((), "exactly one of client, round, state must be set")]
    return storable_errors(event.model_dump(), unsigned=frozenset({("client", "node_id")}))
