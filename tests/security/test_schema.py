"""Schemathesis over the OpenAPI document against the live server, with every check it has (findings 11 and 12): no
5xx, no lost server, every status the server returns is documented, every response matches its schema (one error
body, ``ErrorBody``, everywhere), every content type is the documented one.

One check is narrowed, not dropped: schemathesis's ``positive_data_acceptance`` wants schema-valid input accepted
(2xx, 401, 403, 404). The API refuses some schema-valid input for rules a schema cannot state — a run with
``min_devices`` > ``quorum`` (a model-level error at the body's root), a delta request whose ``from`` is after
``to``, upload bytes that are not a tensor frame, a report for a closed round — with a documented 409 or 422 naming
the rule. What must never happen is schema-valid input refused *as* schema-invalid (a 422 whose ``errors`` name a
field): the document would promise more than the server accepts. ``schema_valid_input_is_not_called_invalid`` checks
that instead.

Schemathesis's pytest plugin does not collect under this pytest; its strategies are driven with Hypothesis here.
The default tier sends a few cases per operation; the integration tier many more.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_cloud import ADMIN
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cooperllm.protocol import ERRORS


def schema_valid_input_is_not_called_invalid(ctx, response, case) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return
    body = response.json()
    # a rule across fields (min_devices ≤ quorum) is the model's, at the body's root: no schema can state it
    fields = [e for e in body.get("errors") or [] if e["loc"] != ["body"]]
    assert not fields, f"schema-valid input refused as schema-invalid: {fields[:2]}"
    assert body["detail"].split(":")[0] in ERRORS.values(), body


def _is_admin(op) -> bool:
    return op.path.startswith("/v1/admin") or op.path == "/v1/metrics"


@pytest.mark.parametrize(
    "examples", [6, pytest.param(60, marks=pytest.mark.integration)], ids=["default-tier", "integration-tier"]
)
def test_every_operation_keeps_to_its_schema(live, examples):
    device_token = live.device("fuzz").token
    live.admin().create_run()
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    failures: list[str] = []

    def fuzz(op) -> None:
        token = ADMIN if _is_admin(op) else device_token

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            if case.query and "wait" in case.query:
                case.query["wait"] = min(float(case.query["wait"]), 0.5)  # long polls: bounded time, same code
            try:
                case.call_and_validate(
                    base_url=live.url,
                    headers={"Authorization": f"Bearer {token}"},
                    excluded_checks=[positive_data_acceptance],
                    additional_checks=[schema_valid_input_is_not_called_invalid],
                    timeout=30,
                )
            except BaseException as exc:  # schemathesis's FailureGroup is a BaseExceptionGroup
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{case.method} {op.path}: {str(exc).splitlines()[0]} — {exc!r}"[:400])

        check()

    # device operations first: the admin ones may revoke devices and replace the run
    for op in sorted(operations, key=_is_admin):
        fuzz(op)
    assert not failures, "\n".join(failures[:8])
    assert live.admin().health().status == "ok"  # and the server is still there
