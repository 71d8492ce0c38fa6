"""Property-based run over the OpenAPI schema against the live server: no input may cause a 5xx.

Schemathesis's pytest plugin does not collect under this pytest; its strategies are driven with Hypothesis here.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import ADMIN

pytestmark = pytest.mark.integration


def test_no_server_errors(live):
    device_token = live.device("fuzz").token
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures = []

    def fuzz(op) -> None:
        admin_path = op.path.startswith("/v1/admin") or op.path == "/v1/metrics"
        token = ADMIN if admin_path else device_token

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=live.url, headers={"Authorization": f"Bearer {token}"})
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))

        check()

    for op in operations:
        fuzz(op)
    assert not failures, failures[:5]
