"""Enrolment: an admin-issued enrolment token (or, where configured, the shared enrolment key) buys a per-device
bearer token (shown once, stored hashed)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from cloud_api.deps import State
from cloud_api.errors import ENROL_ERRORS
from cloud_api.security import same_secret
from cooperllm.protocol import ERRORS, EnrollRequest, EnrollResponse

router = APIRouter(tags=["devices"], responses=ENROL_ERRORS)


@router.post("/enroll", operation_id="enroll", response_model=EnrollResponse, status_code=201)
def enroll(body: EnrollRequest, state: State) -> EnrollResponse:
    """Trade an enrolment token (``POST /admin/enrolment-tokens``; each use enrols one device) for a device token;
    use it as ``Authorization: Bearer <token>``.

    Rate-limited per socket peer before the body is read (cloud_api.middleware): key guessing, token farming."""
    shared = state.settings.enrolment_key
    shared_ok = shared is not None and same_secret(body.enrolment_key, shared)
    if not shared_ok and not state.registry.spend_enrolment_token(body.enrolment_key):
        raise HTTPException(403, ERRORS["bad_enrolment_key"])
    device_id, token = state.registry.enroll(body.device_name)
    return EnrollResponse(device_id=device_id, token=token)
