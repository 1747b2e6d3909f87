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
from common.validate import check_experiment

INT64 = 2**63


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


def json_safe(value: Any) -> Any:
    """Non-finite floats (which JSON cannot carry) as strings, so any bad input can be echoed."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def invalid(loc: tuple, msg: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": msg,
                                    "input": value}])


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
