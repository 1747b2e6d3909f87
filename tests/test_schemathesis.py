"""Property-based requests generated from the dashboard's OpenAPI schema (schemathesis).

Every answer is checked by every one of schemathesis' checks: no 5xx; only documented status
codes, content types, response schemas and headers; schema-valid data accepted, invalid data
refused; in the walk, nothing available after a delete and everything created available.
Schema-valid data is sent as a client that reads the descriptions sends it
(:func:`follow_the_described_rules`), for what JSON Schema cannot say.

1. Every operation alone: valid and invalid inputs, random ids, at least 300 requests.
2. The stateful walk: schemathesis follows the schema's links (create an experiment -> launch
   it / attach a run -> ingest events -> read, export, compare, cancel -> delete) with fixed
   seeds, for at least 1,000 requests of valid data (invalid data is test 1's: schemathesis'
   negative generation draws differently when hypothesis replays a scenario, which ends the
   run as flaky). It must really get through: experiments created and launched, runs attached
   and fed events (stored: 201), and exports of runs with rows.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.engine.link_calibration import LinkCalibrationState
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.python import asgi
from schemathesis.python._constants.orchestrator import make_constants_value_source
from sqlalchemy import delete

from common.config import MAX_CLIENTS, ExperimentConfig
from common.datasets import SPECS
from common.validate import layer_count
from server.dashboard.app import create_app
from server.dashboard.models import Experiment
from server.dashboard.openapi import model_layers
from server.dashboard.settings import Settings

EXAMPLES = 12  # per operation and mode
SCENARIOS_PER_RUN = 20  # x up to 15 steps; runs (seeds STATEFUL_SEED, +1, ...) until:
STATEFUL_REQUESTS = 2000
MAX_RUNS = 40
MIN_FED = 20  # ingested events into attached runs, and exports of runs with rows, at least


ADMIN_TOKEN = "fuzz-admin-token"
CALL_TIMEOUT_S = 120
STREAM_READ_S = 2  # a stream is read to its first event, or for this long (nothing after ?after)
STATEFUL_SEED = 20261201


def dashboard_app(tmp_path, **settings):
    return create_app(Settings(data_dir=tmp_path, max_concurrent_runs=0, **settings),
                      extra_hosts=frozenset({asgi.HOST}))


def dashboard_schema(tmp_path, **settings):
    return schemathesis.openapi.from_asgi("/openapi.json", dashboard_app(tmp_path, **settings))


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(tmp_path):
    """Every check of schemathesis on every answer, as in the walk: no 5xx, nothing
    undocumented, valid data accepted (as a client reading the descriptions sends it), invalid
    data refused."""
    schema = dashboard_schema(tmp_path, token=ADMIN_TOKEN)
    schema.hook("map_case")(follow_the_described_rules)
    walk = Walk()
    call = {"headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "timeout": STREAM_READ_S}
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                def request(case) -> None:
                    response = case.call(**call)
                    walk.answered(case, response)
                    walk.check(case, response, lambda: case.validate_response(
                        response, transport_kwargs=call))

                try:
                    request()
                except Unsatisfiable:  # no inputs to break: GET /api/info, /api/devices, ...
                    assert mode == GenerationMode.NEGATIVE, operation.label
    finally:
        asgi.shutdown_lifespans()
    assert not walk.findings, "\n\n".join(walk.findings[:10])
    total = sum(walk.calls.values())
    assert total >= 300, walk.calls
    assert not [key for key in walk.calls if key[1] >= 500]
    assert any(code < 300 for _, code in walk.calls), "nothing generated was ever accepted"
    print(f"{total} requests:", dict(Counter(code for _, code in walk.calls.elements())))


def test_the_layer_bounds_of_the_schema_hold_at_any_width_size_and_dataset() -> None:
    """``compression.last_k``'s bound per model in the schema is counted at the defaults; the
    server counts the model an experiment builds: the same at the extremes of the other
    fields."""
    fields = ExperimentConfig.model_json_schema()["properties"]
    smallest = (0.05, fields["image_size"]["minimum"])
    largest = (fields["width"]["maximum"], fields["image_size"]["maximum"])
    for model, count in model_layers().items():
        for width, size in (smallest, largest):
            for dataset in SPECS:
                assert layer_count(model, width, size, dataset) == count, (
                    model, width, size, dataset)


def integral(value: object) -> object:
    """JSON Schema's integers as the validator wants them (``3.0`` -> ``3``), all the way down."""
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def follow_the_described_rules(context, case):
    """A generated valid request as a client that reads the descriptions sends it, for the rules
    JSON Schema cannot say: an experiment's integers are written as integers (JSON Schema calls
    ``3.0`` one; the config is strict), its fleet holds at most ``MAX_CLIENTS`` clients and at
    least ``min_train_clients`` (default 2); an event names the run of its URL. Invalid requests
    are left as generated."""
    body = case.body
    if (case._meta is None or case._meta.generation.mode != GenerationMode.POSITIVE
            or not isinstance(body, dict)):
        return case
    label = case.operation.label
    if label.startswith("POST /api/experiments"):
        case.body = within_the_fleet(integral(body))
    elif label == "POST /api/runs/{run_id}/events" and "run_id" in case.path_parameters:
        case.body = {**body, "run_id": case.path_parameters["run_id"]}
    return case


MIN_TRAIN_CLIENTS = ExperimentConfig.model_fields["min_train_clients"].default


def within_the_fleet(body: dict) -> dict:
    """At most ``MAX_CLIENTS`` in the fleet (else one of each entry), ``min_train_clients``
    (given or its default) at most their total."""
    fleet = body.get("fleet")
    if not (isinstance(fleet, list) and all(isinstance(e, dict) for e in fleet)):
        return body
    if sum(e.get("count", 0) for e in fleet) > MAX_CLIENTS:
        fleet = [{**e, "count": 1} for e in fleet]
    total = sum(e.get("count", 0) for e in fleet)
    wanted = body.get("min_train_clients", MIN_TRAIN_CLIENTS)
    return {**body, "fleet": fleet, "min_train_clients": max(1, min(wanted, total))}


class Walk:
    """What the stateful walk did: requests by (operation, status), events stored in runs it
    attached, exports of runs with rows, and every finding of schemathesis' checks."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()
        self.run_tokens: dict[str, str] = {}
        self.fed: Counter[str] = Counter()  # run id -> events stored (201)
        self.exported_rows = 0
        self.findings: list[str] = []

    def answered(self, case, response) -> None:
        label, status = case.operation.label, response.status_code
        self.calls[(label, status)] += 1
        if label.endswith("/attach") and status == 201:
            body = response.json()
            self.run_tokens[body["run"]["id"]] = body["report_token"]
        run_id = str(case.path_parameters.get("run_id"))
        if label.endswith("/events") and status == 201 and run_id in self.run_tokens:
            self.fed[run_id] += 1
        if label == "GET /api/runs/{run_id}/export" and status == 200 and has_rows(response):
            self.exported_rows += 1

    def check(self, case, response, check) -> None:
        try:
            check()
        except (Failure, FailureGroup) as error:
            failures = error.exceptions if isinstance(error, FailureGroup) else [error]
            self.findings += [f"{case.operation.label} -> {response.status_code}: "
                              f"{failure.title}\n{failure.message}\n{response.text[:500]}\n"
                              f"{case.as_curl_command()}" for failure in failures]


def has_rows(response) -> bool:
    """An export (CSV, or JSON of the run) with at least one client or round row."""
    if response.headers["content-type"][0].startswith("text/csv"):
        return len(response.text.splitlines()) > 1
    detail = response.json()
    return bool(detail["rounds"] or detail["clients"])


def walk_once(machine, walk_seed: int) -> tuple[int, int, str]:
    """One hypothesis run of ``SCENARIOS_PER_RUN`` scenarios from ``walk_seed``: (seed,
    scenarios, how it ended). Should a scenario replayed by hypothesis draw differently (the
    server's answers carry new ids), hypothesis ends the run as flaky, as schemathesis' own
    runner ends its stateful phase then; the walk goes on with the next seed."""
    started = machine.scenarios
    try:
        seed(walk_seed)(machine).run(settings=settings(
            max_examples=SCENARIOS_PER_RUN, stateful_step_count=15, deadline=None,
            database=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate]))
        ended = "done"
    except FlakyStrategyDefinition:
        ended = "flaky"
    return walk_seed, machine.scenarios - started, ended


ROOT = "RANDOM__POST_api_experiments"  # the state machine's rule: create an experiment
# a stream of a run is cut at its first event; links are the schema's only (none inferred)
STATEFUL_CONFIG = {"max-stream-events": 1,
                   "phases": {"stateful": {"inference": {"algorithms": []},
                                           "generation": {"mode": "positive"}}}}


class FollowEveryLink(LinkCalibrationState):
    """Every link's values are used (schemathesis otherwise leaves one out at random, to explore:
    with true randomness, so a replayed scenario draws differently and hypothesis stops the walk
    as flaky; random ids are the first test's business)."""

    def use_probability(self, transition_id: str) -> float:
        return 1.0

    def is_calibrated(self, transition_id: str) -> bool:
        return True


@pytest.mark.fuzz
def test_stateful_walk_through_the_links_finds_nothing(tmp_path):
    """The server has an admin token (as the schema's security says) and the walk holds it; an
    attached run's token, from the attach answer, goes with that run's events."""
    app = dashboard_app(tmp_path, token=ADMIN_TOKEN, max_queued_runs=100_000)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(STATEFUL_CONFIG))
    schema.hook("map_case")(follow_the_described_rules)
    walk = Walk()

    machine = schema.build_state_machine(  # as schema.as_state_machine(), but FollowEveryLink
        feedback=FeedbackSources(constants_value_source=make_constants_value_source(schema)),
        link_calibration=FollowEveryLink())

    class Machine(machine):
        scenarios = 0

        def setup(self) -> None:
            """Each scenario starts from an empty database (hypothesis replays a scenario and
            needs it to meet the same answers)."""
            type(self).scenarios += 1
            with app.state.services.db.write() as session:
                session.execute(delete(Experiment))  # runs and their data cascade

        def get_call_kwargs(self, case):
            token = ADMIN_TOKEN
            if case.operation.label == "POST /api/runs/{run_id}/events":
                token = walk.run_tokens.get(str(case.path_parameters.get("run_id")), token)
            # creating an experiment may build its model (the last_k check): slow when busy
            timeout = STREAM_READ_S if case.operation.label.endswith("/stream") else CALL_TIMEOUT_S
            return {"headers": {"Authorization": f"Bearer {token}"}, "timeout": timeout}

        def call(self, case, **kwargs):
            response = super().call(case, **kwargs)
            walk.answered(case, response)
            return response

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            walk.check(case, response, lambda: case.validate_response(
                response, transport_kwargs=kwargs, recorder=self.recorder))

    for name in machine.root_rules - {ROOT}:  # every scenario starts by creating an experiment
        setattr(Machine, name, None)
    runs = []  # (seed, scenarios run, how the run ended)
    try:
        while sum(walk.calls.values()) < STATEFUL_REQUESTS and len(runs) < MAX_RUNS:
            runs.append(walk_once(Machine, STATEFUL_SEED + len(runs)))
    finally:
        asgi.shutdown_lifespans()
    total = sum(walk.calls.values())
    print(f"{total} requests:", dict(sorted(walk.calls.items())))
    print(f"{sum(walk.fed.values())} events into {len(walk.fed)} attached runs, "
          f"{walk.exported_rows} exports with rows, {len(walk.findings)} findings; runs: {runs}")
    assert not walk.findings, "\n\n".join(walk.findings[:10])
    assert total >= 1000, walk.calls
    assert not [key for key in walk.calls if key[1] >= 500]
    assert walk.calls[("POST /api/experiments", 201)] >= MIN_FED, walk.calls
    assert walk.calls[("POST /api/experiments/{experiment_id}/launch", 202)] >= MIN_FED
    assert sum(walk.fed.values()) >= MIN_FED and len(walk.fed) >= MIN_FED // 2, walk.fed
    assert walk.exported_rows >= MIN_FED
