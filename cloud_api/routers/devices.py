"""Enrolment: an enrolment key buys a per-device bearer token (shown once, stored hashed)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from cloud_api.deps import State
from cloud_api.security import same_secret
from cooperllm.protocol import ERRORS, EnrollRequest, EnrollResponse

router = APIRouter(tags=["devices"])


@router.post("/enroll", operation_id="enroll", response_model=EnrollResponse, status_code=201)
def enroll(body: EnrollRequest, state: State) -> EnrollResponse:
    """Trade the enrolment key for a device token; use it as ``Authorization: Bearer <token>``."""
    if not same_secret(body.enrolment_key, state.settings.enrolment_key):
        raise HTTPException(403, ERRORS["bad_enrolment_key"])
    device_id, token = state.registry.enroll(body.device_name)
    return EnrollResponse(device_id=device_id, token=token)
