"""Property-based requests generated from the dashboard's OpenAPI schema (schemathesis).

1. Every operation alone: valid and invalid inputs, at least 300 requests, never a 5xx.
2. The stateful phase: schemathesis follows the schema's links (create an experiment ->
   launch it / attach a run -> ingest events -> read, stream, export, cancel, delete) with a
   fixed seed, for at least 1,000 requests, checking every answer with schemathesis' checks:
   no 5xx, only documented status codes, content types, response schemas and headers.

   Not checked: ``positive_data_acceptance``. The experiment schema cannot say two things the
   server enforces (its description does): the checks across fields (``min_train_clients`` at
   most the fleet's size, ``compression.last_k`` at most the model's layers...) and strict
   integers (JSON Schema calls ``3.0`` an integer; the config validator refuses it on
   purpose). Such bodies are answered 422 naming the field, which that check reports.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi
from sqlalchemy import delete

from common.config import MAX_CLIENTS
from server.dashboard.app import create_app
from server.dashboard.models import Experiment
from server.dashboard.settings import Settings

EXAMPLES = 12  # per operation and mode
STATEFUL_SCENARIOS = 300  # x up to 15 steps: well over 1,000 requests


ADMIN_TOKEN = "fuzz-admin-token"
CALL_TIMEOUT_S = 120
STREAM_READ_S = 2
STATEFUL_SEED = 20261201


def dashboard_app(tmp_path, **settings):
    return create_app(Settings(data_dir=tmp_path, max_concurrent_runs=0, **settings),
                      extra_hosts=frozenset({asgi.HOST}))


def dashboard_schema(tmp_path, **settings):
    return schemathesis.openapi.from_asgi("/openapi.json", dashboard_app(tmp_path, **settings))


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(tmp_path):
    schema = dashboard_schema(tmp_path)
    calls: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                def request(case) -> None:
                    response = case.call()
                    calls[(case.operation.label, response.status_code)] += 1
                    if response.status_code >= 500:
                        failures.append(f"{case.operation.label}: {response.status_code} "
                                        f"{response.text[:300]} for {case.as_curl_command()}")

                try:
                    request()
                except Unsatisfiable:  # no inputs to break: GET /api/info, /api/devices, ...
                    assert mode == GenerationMode.NEGATIVE, operation.label
    finally:
        asgi.shutdown_lifespans()
    assert not failures, "\n".join(failures[:10])
    total = sum(calls.values())
    assert total >= 300, calls
    assert any(code < 300 for _, code in calls), "nothing generated was ever accepted"
    print(f"{total} requests:", dict(Counter(code for _, code in calls.elements())))


def integral(value: object) -> object:
    """JSON Schema's integers as the validator wants them (``3.0`` -> ``3``), all the way down."""
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def follow_the_described_rules(context, case):
    """What a client that reads ``ExperimentConfig``'s description does to a generated valid
    experiment: strict integers, and the checks across fields kept (so the walk can create
    experiments and go on from them). Invalid ones are left as generated."""
    body = case.body
    if (case._meta is None or case._meta.generation.mode != GenerationMode.POSITIVE
            or not isinstance(body, dict)
            or not case.operation.label.startswith("POST /api/experiments")):
        return case
    case.body = described(integral(body))
    return case


def described(body: dict) -> dict:
    fleet = body.get("fleet")
    if isinstance(fleet, list) and all(isinstance(e, dict) for e in fleet):
        total = sum(e.get("count", 0) for e in fleet if isinstance(e.get("count"), int))
        if total > MAX_CLIENTS:
            fleet = [{**e, "count": 1} for e in fleet]
            total = len(fleet)
        body["fleet"] = fleet
        if isinstance(body.get("min_train_clients"), int):
            body["min_train_clients"] = max(1, min(body["min_train_clients"], total))
    if isinstance(body.get("classes_per_client"), int):
        body["classes_per_client"] = max(1, min(body["classes_per_client"], 10))
    compression = body.get("compression")
    if isinstance(compression, dict) and isinstance(compression.get("last_k"), int):
        body["compression"] = {**compression, "last_k": 1}
    return body


@pytest.mark.fuzz
def test_stateful_walk_through_the_links_finds_nothing(tmp_path):
    """The server has an admin token (as the schema's security says) and the walk holds it; an
    attached run's token, from the attach answer, goes with that run's events."""
    app = dashboard_app(tmp_path, token=ADMIN_TOKEN, max_queued_runs=100_000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.hook("map_case")(follow_the_described_rules)
    calls: Counter[tuple[str, int]] = Counter()
    excluded = [schemathesis.checks.positive_data_acceptance]
    run_tokens: dict[str, str] = {}

    class Walk(schema.as_state_machine()):
        def setup(self) -> None:
            """Each scenario starts from an empty database (hypothesis replays a scenario and
            needs it to meet the same answers)."""
            with app.state.services.db.write() as session:
                session.execute(delete(Experiment))  # runs and their data cascade

        def get_call_kwargs(self, case):
            token = ADMIN_TOKEN
            if case.operation.label == "POST /api/runs/{run_id}/events":
                token = run_tokens.get(str(case.path_parameters.get("run_id")), token)
            # creating an experiment may build its model (the last_k check): slow when busy;
            # the stream of an active run never ends: schemathesis reads it for its timeout
            label = case.operation.label
            timeout = STREAM_READ_S if label.endswith("/stream") else CALL_TIMEOUT_S
            return {"headers": {"Authorization": f"Bearer {token}"}, "timeout": timeout}

        def call(self, case, **kwargs):
            if (case.operation.label == "POST /api/runs/{run_id}/events"
                    and isinstance(case.body, dict) and "run_id" in case.path_parameters):
                # what the run's reporter does: an event names the run it is posted to
                case.body = {**case.body, "run_id": str(case.path_parameters["run_id"])}
            response = super().call(case, **kwargs)
            calls[(case.operation.label, response.status_code)] += 1
            if case.operation.label.endswith("/attach") and response.status_code == 201:
                body = response.json()
                run_tokens[body["run"]["id"]] = body["report_token"]
            return response

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, excluded_checks=excluded, transport_kwargs=kwargs)

    try:
        seed(STATEFUL_SEED)(Walk).run(settings=settings(
            max_examples=STATEFUL_SCENARIOS, stateful_step_count=15, deadline=None,
            database=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate]))
    finally:
        asgi.shutdown_lifespans()
    total = sum(calls.values())
    by_operation = Counter(label for label, _ in calls.elements())
    print(f"{total} requests:", dict(sorted(calls.items())))
    assert total >= 1000, calls
    created = calls[("POST /api/experiments", 201)]
    assert created >= 10, calls  # the walk really made experiments
    # the walk really launches and attaches; the events it posts rarely reach a run it attached
    # (mostly 404 for generated run ids), so ingestion is covered by test_dashboard_api instead
    for label in ("POST /api/experiments/{experiment_id}/launch",
                  "POST /api/experiments/{experiment_id}/attach"):
        assert any(code < 300 for (op, code) in calls if op == label), (label, by_operation)
    assert by_operation["GET /api/runs/{run_id}/export"] >= 100  # (of unknown runs, mostly)
