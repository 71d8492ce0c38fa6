"""Enrolment: an enrolment key buys a per-device bearer token (shown once, stored hashed)."""

from __future__ import annotations

import math

from fastapi import APIRouter, HTTPException, Request

from cloud_api.deps import State
from cloud_api.security import same_secret
from cooperllm.protocol import ERRORS, EnrollRequest, EnrollResponse

router = APIRouter(tags=["devices"])


@router.post("/enroll", operation_id="enroll", response_model=EnrollResponse, status_code=201)
def enroll(body: EnrollRequest, state: State, request: Request) -> EnrollResponse:
    """Trade the enrolment key for a device token; use it as ``Authorization: Bearer <token>``.

    Rate-limited per client address like device calls (key guessing and token farming)."""
    allowed, wait = state.limiter.allow(("enroll", request.client.host if request.client else ""))
    if not allowed:
        raise HTTPException(429, ERRORS["rate_limited"], headers={"Retry-After": str(max(1, math.ceil(wait)))})
    if not same_secret(body.enrolment_key, state.settings.enrolment_key):
        raise HTTPException(403, ERRORS["bad_enrolment_key"])
    device_id, token = state.registry.enroll(body.device_name)
    return EnrollResponse(device_id=device_id, token=token)
