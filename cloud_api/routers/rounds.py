"""Rounds: the current round, guidance frames, report and delta uploads, model sync by replay."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cloud_api.deps import BEARER_SECURITY, DeviceId, State, request_device
from cloud_api.errors import BODY_ERRORS, DEVICE_ERRORS, invalid_request
from cooperllm import dtc
from cooperllm.protocol import (
    ERRORS,
    FRAME_MEDIA_TYPE,
    GUIDANCE_ID_HEADER,
    MAX_BATCH_REPORTS,
    GuidanceRef,
    ModelSync,
    ReportAck,
    ReportBatch,
    RoundInfo,
    reports_from,
)

router = APIRouter(prefix="/rounds", tags=["rounds"], responses=DEVICE_ERRORS)
T = TypeVar("T")
RoundNo = Annotated[int, Path(ge=0, le=1_000_000)]
MAX_WAIT_S = 60.0


async def off_a_busy_lock(lock: threading.RLock, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, which takes ``lock``: on the event loop when the lock is free (the common case; no thread hop on
    the hot path), in a worker thread when it is held — by a run being created, say — so the loop never waits."""
    if lock.acquire(blocking=False):
        try:
            return fn(*args)  # re-enters the lock: it is an RLock held by this thread
        finally:
            lock.release()
    return await run_in_threadpool(fn, *args)


LongPoll = Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long poll: wait up to this many seconds")]


@router.get("/current", operation_id="get_current_round", response_model=RoundInfo)
async def current_round(
    state: State,
    device: DeviceId,
    after: Annotated[int | None, Query(ge=-1, le=1_000_000, description="with wait: until a round > after")] = None,
    wait: LongPoll = 0.0,
) -> RoundInfo:
    """Config of the current round, its guidance list and this device's seed range [seed_lo, seed_hi).

    Long poll: with ``after=r&wait=s`` the answer comes as soon as the run is past round r (the next round opened,
    or the run finished, failed or was replaced), or after s seconds with the current state, whichever is first."""
    if after is not None and wait > 0:
        await state.engine.waiters.wait(state.engine.moved_past(after), wait)
    return await off_a_busy_lock(state.engine.lock, state.engine.round_info, device, state.host.artifact_hashes)


@router.get("/{round}/guidance", operation_id="list_guidance", response_model=list[GuidanceRef])
def guidance_list(round: RoundNo, state: State, device: DeviceId) -> list[GuidanceRef]:
    """The guidance list of a round (block, id, frame sha256, shape), published as soon as the rectifier stored it:
    the next round's while the current one still runs, so devices download new versions ahead of time."""
    return state.engine.guidance_list(round)


@router.get(
    "/{round}/guidance/{block}",
    operation_id="get_guidance",
    response_class=Response,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}, "description": "tensor frame of V_b (n_b × m)"}},
)
def guidance(round: RoundNo, block: Annotated[int, Path(ge=0, le=100_000)], state: State, device: DeviceId):
    """The basis V_b of the round's guidance for ``block`` as a binary tensor frame (DTC or plain float32)."""
    frame, gid = state.engine.guidance_frame(round, block)
    return Response(frame, media_type=FRAME_MEDIA_TYPE, headers={GUIDANCE_ID_HEADER: gid})


def _batch_schema() -> dict:
    schema = ReportBatch.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # ReportIn is already a component (ModelSync uses it)
    return schema


@router.post(
    "/{round}/reports",
    operation_id="upload_reports",
    responses=BODY_ERRORS,
    response_model=ReportAck,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _batch_schema()}}},
        **BEARER_SECURITY,
    },
)
async def upload_reports(round: RoundNo, request: Request) -> Response:
    """A batch of ZO reports (:class:`ReportBatch`); counted once per (device, idempotency key) and once per
    (seed, block, step).

    The hot path: the body is parsed by pydantic's JSON parser in one step (NaN/Inf are not JSON: 422), the answer
    serialised once; the counting (one short transaction under the engine lock) runs on the loop when the lock is
    free and in a worker thread when it is not, so a lock held elsewhere never stalls the event loop."""
    state = request.app.state.cooper
    device = request_device(state, request)  # inline: no dependency solving on the hot path
    try:
        batch = ReportBatch.model_validate_json(await request.body())
    except ValidationError as exc:
        body = invalid_request([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        return Response(json.dumps(body), status_code=422, media_type="application/json")
    ack = await off_a_busy_lock(state.engine.lock, state.engine.accept_reports, device, round, batch)
    return Response(ack.model_dump_json(), media_type="application/json")


@router.post(
    "/{round}/reports/frame",
    operation_id="upload_report_frame",
    responses=BODY_ERRORS,
    response_model=ReportAck,
    openapi_extra={"requestBody": {"content": {FRAME_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def upload_report_frame(
    round: RoundNo,
    request: Request,
    state: State,
    device: DeviceId,
    idempotency_key: Annotated[str, Header(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")],
) -> Response:
    """The same upload as a DTC report-batch frame (``cooperllm.dtc.encode_reports``); same rules and answer."""

    try:
        decoded = dtc.decode_reports(await request.body(), max_reports=MAX_BATCH_REPORTS)
        batch = ReportBatch(idempotency_key=idempotency_key, reports=reports_from(decoded))
    except (ValueError, ValidationError) as exc:  # DTCError is a ValueError
        raise HTTPException(422, f"{ERRORS['bad_frame']}: {str(exc).splitlines()[0]}") from exc
    ack = await off_a_busy_lock(state.engine.lock, state.engine.accept_reports, device, round, batch)
    return Response(ack.model_dump_json(), media_type="application/json")


@router.post(
    "/{round}/delta",
    operation_id="upload_delta",
    responses=BODY_ERRORS,
    response_model=ReportAck,
    openapi_extra={"requestBody": {"content": {FRAME_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def upload_delta(
    round: RoundNo,
    request: Request,
    state: State,
    device: DeviceId,
    idempotency_key: Annotated[str, Header(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")],
    x_n_examples: Annotated[int, Header(ge=1, le=1_000_000)],
) -> ReportAck:
    """Strategy ``bp``: the device's LoRA update Δθ (tensor frame, layout order); FedAvg weights by n_examples."""
    frame = await request.body()
    if not frame:
        raise HTTPException(422, ERRORS["bad_frame"])

    return await run_in_threadpool(state.engine.accept_delta, device, round, idempotency_key, x_n_examples, frame)


@router.get("/{round}/sync", operation_id="get_model_sync", response_model=ModelSync)
async def model_sync(round: RoundNo, state: State, device: DeviceId, wait: LongPoll = 0.0) -> ModelSync:
    """Seeds, scalars, guidance ids and coefficients, the per-block update and checksums: replay θ_r → θ_r+1 with
    apply_update.

    Long poll: with ``wait=s`` a round that is still open is waited for (up to s seconds) instead of answered 409."""

    if wait > 0:
        await state.engine.waiters.wait(state.engine.moved_past(round), wait)
    return await run_in_threadpool(state.engine.sync, round)
