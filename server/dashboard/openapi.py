"""The OpenAPI document says what the server enforces, beyond what FastAPI derives from types:

- every answer a client can get: 403 (the request guard: a host not served here, a cross-origin
  write), 400/411/413 for bodies (unparsable, chunked, over the size limit), 422 for anything
  with parameters or a body, besides the 401/404/409/429 each route declares;
- device names: the catalogue's, as an ``enum`` (``GET /api/devices`` describes them);
- the checks across fields of an experiment (``ExperimentConfig``'s description), which JSON
  Schema cannot express: a body that breaks them is answered 422 naming the field;
- links: what a created experiment or an attached run lets a client call next (launch, attach,
  read, delete; a run's detail, rounds, clients, events, stream, export, cancel), so a stateful
  client (schemathesis) can walk create experiment -> launch/attach -> ingest -> export.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from common.devices import load_catalogue

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
    "\n\nChecked across fields (422 naming the field when broken): the fleet's total `count` "
    "is at most the maximum number of clients; `min_train_clients` is at most that total; "
    "with the `pathological` partitioner, `classes_per_client` is at most the dataset's number "
    "of classes; `compression.last_k` is at most the number of Conv2d/Linear layers of the "
    "model the experiment builds. `POST /api/experiments/validate` answers the same without "
    "storing anything.")

# operation id -> {link name: (target operation id, {parameter: runtime expression})}
EXPERIMENT = {"experiment_id": "$response.body#/id"}
RUN = {"run_id": "$response.body#/id"}
ATTACHED = {"run_id": "$response.body#/run/id"}
LINKS: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "create_experiment": {
        "launch": ("launch_experiment", EXPERIMENT), "attach": ("attach_run", EXPERIMENT),
        "read": ("read_experiment", EXPERIMENT), "delete": ("delete_experiment", EXPERIMENT),
    },
    "launch_experiment": {
        "read": ("read_run", RUN), "cancel": ("cancel_run", RUN), "export": ("export_run", RUN),
    },
    "attach_run": {
        "ingest": ("ingest_event", ATTACHED), "read": ("read_run", ATTACHED),
        "rounds": ("read_rounds", ATTACHED), "clients": ("read_clients", ATTACHED),
        "stream": ("stream_events", ATTACHED), "export": ("export_run", ATTACHED),
        "cancel": ("cancel_run", ATTACHED),
    },
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the additions above (built once, then cached)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        _enforced(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _enforced(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    device = components["FleetEntry"]["properties"]["device"]
    components["FleetEntry"]["properties"]["device"] = {
        "type": "string", "enum": sorted(load_catalogue().profiles), "title": device["title"],
        "description": "a device profile of the catalogue (GET /api/devices)"}
    config = components["ExperimentConfig"]
    config["description"] = config.get("description", "") + CROSS_FIELD_RULES
    by_id = {op["operationId"]: op for ops in schema["paths"].values() for op in ops.values()}
    for ops in schema["paths"].values():
        for op in ops.values():
            responses = op["responses"]
            responses.setdefault("403", GUARD)
            if "requestBody" in op:
                for code, answer in BODY_REFUSALS.items():
                    responses.setdefault(code, answer)
            if "requestBody" in op or op.get("parameters"):
                responses.setdefault("422", INVALID_RESPONSE)
    for source, links in LINKS.items():
        op = by_id[source]
        success = next(code for code in op["responses"] if code.startswith("2"))
        op["responses"][success]["links"] = {
            name: {"operationId": target, "parameters": parameters}
            for name, (target, parameters) in links.items()}
