"""The OpenAPI document says what the server enforces, beyond what FastAPI derives from types:

- every answer a client can get: 403 (the request guard: a host not served here, a cross-origin
  write), 400/411/413 for bodies (unparsable, chunked, over the size limit), 422 for anything
  with parameters or a body, besides the 401/404/409/429 each route declares;
- device names: the catalogue's, as an ``enum`` (``GET /api/devices`` describes them);
- the checks across fields of an experiment, as ``if``/``then`` where JSON Schema can say them
  (``classes_per_client`` at most the dataset's classes with the ``pathological`` partitioner,
  ``compression.last_k`` at most the model's Conv2d/Linear layers, no ``rank`` for a method
  that takes none), in ``ExperimentConfig``'s description where it cannot (sums over the fleet);
- events: exactly one of ``client``, ``round``, ``state`` (``oneOf``), the URL's run as
  ``run_id``, and every integer within what the database stores (64-bit; node ids unsigned);
- links: what a created experiment, a launched or attached run, or a stored event lets a
  client call next, so a stateful client (schemathesis) can walk create experiment ->
  launch/attach -> ingest events -> read, export, compare, cancel -> delete.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import cache
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from common.compression.registry import REGISTRY
from common.config import CompressionConfig, ExperimentConfig, ModelName
from common.datasets import SPECS
from common.devices import load_catalogue
from common.validate import layer_count
from server.dashboard.schemas import RUN_ID_PATTERN
from server.dashboard.validation import EVENT_PARTS, INT64, UNSIGNED

TEXT = {"text/plain": {"schema": {"type": "string"}}}
PROBLEM = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
INVALID = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}
GUARD = {"description": "refused before routing: a Host not served here, or a write whose "
         "Origin is another site", "content": TEXT}
BODY_REFUSALS = {
    "400": {"description": "the body is not JSON", "content": PROBLEM},
    "411": {"description": "a body without a Content-Length (chunked)", "content": TEXT},
    "413": {"description": "a body over the size limit (1 MiB)", "content": TEXT},
}
INVALID_RESPONSE = {"description": "invalid parameters or body: every problem, by field",
                    "content": INVALID}
CROSS_FIELD_RULES = (
    "\n\nChecked across fields (422 naming the field when broken), beyond this schema's "
    "`if`/`then` rules: the fleet's total `count` is at most the maximum number of clients "
    "(2000); `min_train_clients` (default 2) is at most that total. "
    "`POST /api/experiments/validate` answers the same without storing anything.")
EVENT_RULES = (
    "\n\n`run_id` is the run of the URL it is posted to (422 otherwise). Integers are within "
    "what the database stores: 64-bit signed, `client.node_id` unsigned.")

# operation id -> {link name: (target operation id, {parameter: runtime expression})}
EXPERIMENT = {"experiment_id": "$response.body#/id"}
RUN = {"run_id": "$response.body#/id"}
RUN_EXPERIMENT = {"experiment_id": "$response.body#/experiment_id"}
ATTACHED = {"run_id": "$response.body#/run/id"}
SAME_RUN = {"run_id": "$request.path.run_id"}
LINKS: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "create_experiment": {
        "launch": ("launch_experiment", EXPERIMENT), "attach": ("attach_run", EXPERIMENT),
        "read": ("read_experiment", EXPERIMENT), "delete": ("delete_experiment", EXPERIMENT),
        "list": ("list_experiments", {}),
    },
    "launch_experiment": {
        "read": ("read_run", RUN), "cancel": ("cancel_run", RUN), "export": ("export_run", RUN),
        "stream": ("stream_events", RUN), "experiment": ("read_experiment", RUN_EXPERIMENT),
    },
    "attach_run": {
        "ingest": ("ingest_event", ATTACHED), "read": ("read_run", ATTACHED),
        "stream": ("stream_events", ATTACHED), "export": ("export_run", ATTACHED),
        "cancel": ("cancel_run", ATTACHED), "runs": ("read_runs", {}),
    },
    "ingest_event": {
        "ingest": ("ingest_event", SAME_RUN), "read": ("read_run", SAME_RUN),
        "rounds": ("read_rounds", SAME_RUN), "clients": ("read_clients", SAME_RUN),
        "export": ("export_run", SAME_RUN),
        "compare": ("compare_runs", {"run": "$request.path.run_id"}),
    },
    "cancel_run": {
        "read": ("read_run", RUN), "delete": ("delete_experiment", RUN_EXPERIMENT),
    },
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the additions above (built once, then cached)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema["components"]["schemas"]
        _catalogue_devices(components)
        _experiment_rules(components)
        _event_rules(components)
        _responses(schema)
        _links(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _catalogue_devices(components: dict[str, Any]) -> None:
    device = components["FleetEntry"]["properties"]["device"]
    components["FleetEntry"]["properties"]["device"] = {
        "type": "string", "enum": sorted(load_catalogue().profiles), "title": device["title"],
        "description": "a device profile of the catalogue (GET /api/devices)"}


def _when(model: type[BaseModel], values: dict[str, Collection[object]]) -> dict[str, Any]:
    """A JSON Schema ``if`` that holds when each field has one of its values; a field left out
    has its default (so it is required only where the default is not among the values)."""
    condition: dict[str, Any] = {
        "properties": {name: {"enum": sorted(allowed)} for name, allowed in values.items()}}
    required = [name for name, allowed in values.items()
                if model.model_fields[name].default not in allowed]
    if required:
        condition["required"] = required
    return condition


@cache
def model_layers() -> dict[str, int]:
    """Conv2d/Linear layers per model (``compression.last_k``'s bound), counted as the server
    counts them (:func:`common.validate.layer_count`) at the default width, image size and
    data set: the count depends on none of them (``tests/test_schemathesis.py`` checks)."""
    defaults = ExperimentConfig.model_fields
    return {model: layer_count(model, *(defaults[name].default
                                        for name in ("width", "image_size", "dataset")))
            for model in get_args(ModelName)}


def _experiment_rules(components: dict[str, Any]) -> None:
    config = components["ExperimentConfig"]
    config["description"] = config.get("description", "") + CROSS_FIELD_RULES
    classes = [{"if": _when(ExperimentConfig, {"partitioner": {"pathological"},
                                               "dataset": {name}}),
                "then": {"properties": {"classes_per_client": {"maximum": spec.num_classes}}}}
               for name, spec in SPECS.items()]
    layers = [{"if": _when(ExperimentConfig, {"model": {model}}),
               "then": {"properties": {"compression": {"properties": {
                   "last_k": {"maximum": count}}}}}}
              for model, count in model_layers().items()]
    config["allOf"] = classes + layers
    no_rank = {name for name, spec in REGISTRY.items() if not spec.takes("rank")}
    components["CompressionConfig"]["allOf"] = [{
        "if": _when(CompressionConfig, {"method": no_rank}),
        "then": {"properties": {"rank": {"type": "null"}}}}]


def _event_rules(components: dict[str, Any]) -> None:
    event = components["Event"]
    event["description"] = event.get("description", "") + EVENT_RULES
    event["properties"]["run_id"]["pattern"] = RUN_ID_PATTERN
    event["oneOf"] = [
        {"required": [part], "properties": {
            other: {"type": "object"} if other == part else {"type": "null"}
            for other in EVENT_PARTS}}
        for part in EVENT_PARTS]
    _storable(event, components, (), set())


def _storable(node: dict[str, Any], components: dict[str, Any], path: tuple[str, ...],
              seen: set[str]) -> None:
    """Bound every integer under ``node`` (``path``: its field names from the event) by what
    ``validation.storable_errors`` lets through: 64-bit signed, unsigned for :data:`UNSIGNED`."""
    ref = node.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            _storable(components[name], components, path, seen)
        return
    if node.get("type") == "integer":
        low, high = (0, 2 * INT64) if path in UNSIGNED else (-INT64, INT64)
        node["minimum"] = max(node.get("minimum", low), low)
        node["maximum"] = min(node.get("maximum", high - 1), high - 1)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key, []):
            _storable(sub, components, path, seen)
    if isinstance(node.get("items"), dict):
        _storable(node["items"], components, path, seen)
    for name, sub in node.get("properties", {}).items():
        _storable(sub, components, (*path, name), seen)


def _responses(schema: dict[str, Any]) -> None:
    for ops in schema["paths"].values():
        for op in ops.values():
            responses = op["responses"]
            responses.setdefault("403", GUARD)
            if "requestBody" in op:
                for code, answer in BODY_REFUSALS.items():
                    responses.setdefault(code, answer)
            if "requestBody" in op or op.get("parameters"):
                responses.setdefault("422", INVALID_RESPONSE)


def _links(schema: dict[str, Any]) -> None:
    by_id = {op["operationId"]: op for ops in schema["paths"].values() for op in ops.values()}
    for source, links in LINKS.items():
        op = by_id[source]
        success = next(code for code in op["responses"] if code.startswith("2"))
        op["responses"][success]["links"] = {
            name: {"operationId": target, "parameters": parameters}
            for name, (target, parameters) in links.items()}
