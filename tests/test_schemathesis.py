"""Property-based requests generated from the dashboard's OpenAPI schema (schemathesis): valid
and invalid inputs to every operation, at least 300 requests, never a 5xx."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi

from server.dashboard.app import create_app
from server.dashboard.settings import Settings

EXAMPLES = 12  # per operation and mode


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, max_concurrent_runs=0),
                     extra_hosts=frozenset({asgi.HOST}))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
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
