"""Every refusal of the service, with its status code and fixed message, against a real uvicorn server."""

from __future__ import annotations

import gzip
import json

import httpx
import numpy as np
import pytest

from cooperllm.api_client import ApiError, CooperClient
from cooperllm.protocol import ERRORS, ReportIn, RunConfig

from .conftest import ADMIN, ENROL, start_server
from .helpers import make_reports, wait_round


@pytest.fixture(scope="module")
def run(live):
    live.admin().create_run(RunConfig(strategy="zo", rounds=3, quorum=2, local_steps=2, blocks=[0], deadline_s=60))
    return live


def _raw(live, method: str, path: str, token: str | None = None, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, live.url + "/v1" + path, headers=headers, timeout=30, **kw)


def test_auth_errors(run):
    assert _raw(run, "GET", "/rounds/current").json() == {"detail": ERRORS["unauthenticated"]}
    r = _raw(run, "GET", "/rounds/current", token="cdt_not-a-token")
    assert (r.status_code, r.json()["detail"]) == (401, ERRORS["unauthenticated"])
    dev = run.device()
    r = _raw(run, "GET", "/metrics", token=dev.token)
    assert (r.status_code, r.json()["detail"]) == (403, ERRORS["forbidden"])
    r = _raw(run, "GET", "/rounds/current", token=ADMIN)
    assert (r.status_code, r.json()["detail"]) == (403, ERRORS["forbidden"])
    r = _raw(run, "POST", "/enroll", json={"enrolment_key": "wrong", "device_name": "x"})
    assert (r.status_code, r.json()["detail"]) == (403, ERRORS["bad_enrolment_key"])
    assert _raw(run, "GET", "/health").status_code == 200


def test_names_with_control_characters_are_refused_before_the_store(run):
    """Schemathesis on PostgreSQL: a NUL in an enrolment token's label was a 500 (PostgreSQL refuses NUL in text);
    a line break would forge log lines. Both are a 422 on every backend, printable names pass."""
    for bad in ("pixel\x00", "pixel\ninjected"):
        r = _raw(run, "POST", "/admin/enrolment-tokens", token=ADMIN, json={"uses": 1, "label": bad})
        assert r.status_code == 422, r.text
        r = _raw(run, "POST", "/enroll", json={"enrolment_key": ENROL, "device_name": bad})
        assert r.status_code == 422, r.text
    r = _raw(run, "POST", "/admin/enrolment-tokens", token=ADMIN, json={"uses": 1, "label": "Pixel 7 — Zürich"})
    assert r.status_code == 201


def test_report_validation_errors(run):
    dev = run.device()
    info = dev.current_round()
    good = make_reports(info, np.random.default_rng(0))
    cases = {
        "unknown_block": ReportIn(seed=info.seed_lo, block=1, step=0, scalar=1.0, n_examples=1),
        "bad_step": ReportIn(seed=info.seed_lo, block=0, step=2, scalar=1.0, n_examples=1),
        "seed_out_of_range": ReportIn(seed=info.seed_hi, block=0, step=0, scalar=1.0, n_examples=1),
        "scalar_out_of_range": ReportIn(seed=info.seed_lo, block=0, step=0, scalar=1e9, n_examples=1),
    }
    for key, bad in cases.items():
        with pytest.raises(ApiError) as err:
            dev.upload_reports(info.round, [*good, bad], f"bad-{key}")
        assert (err.value.status_code, err.value.detail) == (422, ERRORS[key])
    with pytest.raises(ApiError) as err:
        dev.upload_reports(info.round + 5, good, "future")
    assert (err.value.status_code, err.value.detail) == (404, ERRORS["unknown_round"])
    body = (
        '{"idempotency_key": "nan", "reports": [{"seed": SEED, "block": 0, "step": 0, "scalar": NaN, '
        '"n_examples": 1}]}'.replace("SEED", str(info.seed_lo))
    )
    r = _raw(
        run,
        "POST",
        f"/rounds/{info.round}/reports",
        dev.token,
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    r = _raw(run, "POST", f"/rounds/{info.round}/reports", dev.token, json={"idempotency_key": "x", "reports": []})
    assert r.status_code == 422
    assert run.engine.state.per_device.get(info.seed_lo) is None  # nothing of the refused batches was counted
    assert sum(run.engine.state.per_device.values()) == 0


def test_body_cap_counts_streamed_and_decompressed_bytes(run):
    dev = run.device()
    cap = run.settings.max_body_bytes
    big = b"x" * (cap + 1)
    r = _raw(run, "POST", "/rounds/0/reports", dev.token, content=big, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["detail"]) == (413, ERRORS["body_too_large"])

    def chunks():  # no Content-Length: the middleware must count what streams in
        for _ in range(cap // 65536 + 2):
            yield b"y" * 65536

    r = _raw(
        run, "POST", "/rounds/0/reports", dev.token, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()["detail"]) == (413, ERRORS["body_too_large"])
    bomb = gzip.compress(b"{" + b" " * (cap * 2) + b"}")
    assert len(bomb) < cap
    r = _raw(
        run,
        "POST",
        "/rounds/0/reports",
        dev.token,
        content=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (r.status_code, r.json()["detail"]) == (413, ERRORS["body_too_large"])
    r = _raw(
        run,
        "POST",
        "/rounds/0/reports",
        dev.token,
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Encoding": "br"},
    )
    assert (r.status_code, r.json()["detail"]) == (415, ERRORS["unsupported_encoding"])
    info = dev.current_round()
    body = json.dumps(
        {"idempotency_key": "gz", "reports": [r.model_dump() for r in make_reports(info, np.random.default_rng(3))]}
    )
    r = _raw(
        run,
        "POST",
        f"/rounds/{info.round}/reports",
        dev.token,
        content=gzip.compress(body.encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 2


def test_late_report_is_refused_and_not_counted(run):
    run.admin().create_run(RunConfig(strategy="zo", rounds=3, quorum=2, local_steps=2, blocks=[0], deadline_s=60))
    devs = [run.device(f"late{i}") for i in range(3)]
    infos = [d.current_round() for d in devs]
    r0 = infos[0].round
    for d, info in zip(devs[:2], infos[:2], strict=True):
        d.upload_reports(r0, make_reports(info, np.random.default_rng(4)), f"k{info.seed_lo}")
    wait_round(devs[0], r0 + 1)
    with pytest.raises(ApiError) as err:
        devs[2].upload_reports(r0, make_reports(infos[2], np.random.default_rng(5)), "late")
    assert (err.value.status_code, err.value.detail) == (409, ERRORS["round_closed"])
    retry = devs[0].upload_reports(r0, make_reports(infos[0], np.random.default_rng(4)), f"k{infos[0].seed_lo}")
    assert retry.replay and retry.accepted == 0  # a retry of an accepted batch is still answered, not refused
    sync = devs[0].sync(r0)
    assert len(sync.reports) == 4 and all(infos[2].seed_lo > r.seed or r.seed >= infos[2].seed_hi for r in sync.reports)
    assert run.admin().metrics().late_reports >= 2


def test_rate_limit_429(tmp_path, tiny_model_dir, public_tsv):
    srv = start_server(tmp_path, tiny_model_dir, public_tsv, rate_limit_per_s=1.0, rate_burst=3)
    try:
        dev = srv.device()
        codes = []
        for _ in range(6):
            try:
                dev.current_round()
                codes.append(200)
            except ApiError as err:
                codes.append(err.status_code)
                if err.status_code == 429:
                    assert err.detail == ERRORS["rate_limited"] and err.retry_after >= 1
        assert 429 in codes and codes[0] != 429
        with pytest.raises(ApiError) as err:
            for i in range(5):
                CooperClient(srv.url).enroll(ENROL, f"farm{i}")
        assert err.value.status_code == 429
    finally:
        srv.stop()


def test_refuses_default_secrets_outside_development():
    from pydantic import ValidationError

    from cloud_api.settings import Settings

    with pytest.raises(ValidationError, match="refusing to start"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="COOPERLLM_ENROLMENT_KEY"):
        Settings(env="production", admin_token="a" * 32, enrolment_key="short")
    Settings(env="production", admin_token="a" * 32)  # no shared key: devices enrol with admin-issued tokens
    Settings(env="production", admin_token="a" * 32, enrolment_key="b" * 32)
    Settings(env="development")


def test_client_error_type(run):
    c = CooperClient(run.url, "cdt_bogus")
    with pytest.raises(ApiError) as err:
        c.current_round()
    assert err.value.status_code == 401 and not err.value.retryable


@pytest.mark.postgresql
def test_a_database_lock_held_past_the_lock_timeout_is_503_with_retry_after_and_the_retry_counts_once(run):
    """PostgreSQL: an operator's lock on the uploads table holds an upload past ``lock_timeout`` (10 s): the answer is
    503 with Retry-After, nothing is counted, and the same batch retried afterwards counts once."""
    from sqlalchemy import create_engine, text

    dev = run.device("locked")
    info = wait_round(dev, 0)
    reports = make_reports(info, np.random.default_rng(3))[:1]
    body = {"idempotency_key": "locked-1", "reports": [r.model_dump() for r in reports]}
    engine = create_engine(run.settings.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE upload_batches IN EXCLUSIVE MODE"))
            r = _raw(run, "POST", f"/rounds/{info.round}/reports", token=dev.token, json=body)
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (503, {"detail": ERRORS["database_busy"]}, "1")
        assert ApiError(503, ERRORS["database_busy"]).retryable
        again = _raw(run, "POST", f"/rounds/{info.round}/reports", token=dev.token, json=body)
        assert (again.status_code, again.json()["accepted"], again.json()["replay"]) == (200, 1, False)
    finally:
        engine.dispose()
