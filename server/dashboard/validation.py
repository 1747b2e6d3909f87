"""422 replies that name the field: experiment bodies, storable numbers.

An experiment body goes through ``common.validate``, the CLI's path: the raw bytes are parsed
here (so duplicate keys and syntax errors are caught with their line and column), then every
problem becomes one FastAPI error whose ``loc`` is ``("body", *field)`` — what the form uses to
show it beside its field. Numbers the event schema leaves unbounded are checked against what the
database can hold (64-bit integers, finite floats) before anything is written.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from common.config import ConfigError, ExperimentConfig, Problem
from common.configfile import parse
from common.events import Event
from common.validate import check_experiment

INT64 = 2**63
UNSIGNED = frozenset({("client", "node_id")})  # event fields stored as uint64 (Flower node ids)
EVENT_PARTS = ("client", "round", "state")  # an event sets exactly one
ECHO_DEPTH = 16
TOO_DEEP = "(nested too deeply to echo)"


def problem_error(problem: Problem) -> dict:
    """A FastAPI error for ``problem``: ``compression.last_k`` at ``("body", "compression",
    "last_k")``, ``fleet.0.device`` at ``("body", "fleet", 0, "device")``."""
    field = tuple(int(part) if part.isdigit() else part
                  for part in problem.field.split(".") if part)
    return {"type": "value_error", "loc": ("body", *field), "msg": problem.reason,
            "field": problem.field}


def _check_body(raw: bytes) -> ExperimentConfig:
    return check_experiment(parse(raw, "body", "json"), source="body")


async def checked_config(request: Request) -> ExperimentConfig:
    """The request's JSON body as a checked experiment, or 422 with every problem."""
    raw = await request.body()
    try:
        return await run_in_threadpool(_check_body, raw)  # may build a model (last_k)
    except ConfigError as error:
        raise RequestValidationError([problem_error(p) for p in error.problems]) from None


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
    if sum(getattr(event, part) is not None for part in EVENT_PARTS) != 1:
        return [_error((), f"exactly one of {', '.join(EVENT_PARTS)} must be set")]
    return storable_errors(event.model_dump(), unsigned=UNSIGNED)
