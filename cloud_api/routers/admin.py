"""Admin (admin token): create and inspect runs, issue enrolment tokens, revoke devices, metrics."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path

from cloud_api.deps import Admin, State
from cloud_api.errors import ADMIN_ERRORS, BODY_ERRORS, ServiceError
from cooperllm.protocol import (
    DeviceRevoked,
    EnrolmentToken,
    EnrolmentTokenRequest,
    Metrics,
    RoundSummary,
    RunConfig,
    RunInfo,
)

router = APIRouter(tags=["admin"], responses=ADMIN_ERRORS)
RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]
DeviceNo = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.post(
    "/admin/enrolment-tokens",
    operation_id="issue_enrolment_token",
    response_model=EnrolmentToken,
    status_code=201,
    responses=BODY_ERRORS,
)
def issue_enrolment_token(body: EnrolmentTokenRequest, state: State, _: Admin) -> EnrolmentToken:
    """A token that enrols ``uses`` devices (shown once, stored hashed): hand one to each device you provision."""
    token_id, token = state.registry.issue_enrolment_token(body.uses, body.label)
    return EnrolmentToken(id=token_id, token=token, uses=body.uses)


@router.post(
    "/admin/devices/{device_id}/revoke",
    operation_id="revoke_device",
    response_model=DeviceRevoked,
    responses=BODY_ERRORS,
)
def revoke_device(device_id: DeviceNo, state: State, _: Admin) -> DeviceRevoked:
    """Revoke a device's token: its next request is refused with 403. Its reports already counted stay counted."""
    if not state.registry.revoke(device_id):
        raise ServiceError(404, "unknown_device")
    return DeviceRevoked(device_id=device_id, revoked=True)


@router.post(
    "/admin/runs",
    operation_id="create_run",
    response_model=RunInfo,
    status_code=201,
    responses=BODY_ERRORS,
)
def create_run(config: RunConfig, state: State, _: Admin) -> RunInfo:
    """Start a run: θ₀, round-0 guidance (zgr), round 0 opens at once. A running run is stopped."""
    return state.engine.create_run(config)


@router.get("/admin/runs/{run_id}", operation_id="get_run", response_model=RunInfo)
def get_run(run_id: RunId, state: State, _: Admin) -> RunInfo:
    return state.engine.run_info(run_id)


@router.get("/admin/runs/{run_id}/rounds", operation_id="list_rounds", response_model=list[RoundSummary])
def list_rounds(run_id: RunId, state: State, _: Admin) -> list[RoundSummary]:
    return state.engine.round_summaries(run_id)


@router.get("/metrics", operation_id="get_metrics", response_model=Metrics)
def metrics(state: State, _: Admin) -> Metrics:
    """Counters since start, rejections by reason, and the rectifier's cost per round (seconds, backward passes)."""
    eng = state.engine
    with eng.lock:
        counters = dict(eng.counters)
        rejected = dict(eng.rejected)
    return Metrics(
        uptime_s=time.time() - eng.started,
        devices=eng.count_devices(),
        reports_total=eng.count_reports(),
        rejected=rejected,
        rectifier=eng.rectifier_costs(),
        last_lambda=eng.last_lambda,
        **counters,
    )
