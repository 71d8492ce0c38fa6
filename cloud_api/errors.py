"""The service's refusals: an HTTP status and the key of a fixed message that clients may match on."""

from __future__ import annotations

from cooperllm.protocol import ERRORS, ErrorBody


class ServiceError(Exception):
    """An API-level refusal: HTTP status and the key of a fixed message in ``protocol.ERRORS``."""

    def __init__(self, status: int, key: str, detail: str | None = None):
        super().__init__(detail or ERRORS[key])
        self.status = status
        self.key = key
        self.detail = detail or ERRORS[key]


_WHEN = {
    400: "malformed request (a compressed body that does not decompress)",
    401: "no bearer token, or an unknown one",
    403: "a token not allowed here (a device's on an admin endpoint, the admin's on a device endpoint, a revoked "
    "device's) or an unknown enrolment token",
    404: "no run, or no such round, guidance, adapter version or device",
    408: "the request body stalled",
    409: "a conflict with the round's state (closed round, quota reached, idempotency key reused, wrong strategy, "
    "failed run)",
    413: "body too large (counted on the wire and after decompression)",
    415: "unsupported Content-Encoding",
    422: "the request breaks the schema (``errors`` lists where) or a rule the schema cannot state",
    429: "rate limited (see Retry-After)",
    503: "the database did not answer in time (unreachable, or a lock held past the lock timeout): see Retry-After; "
    "or, among workers sharing a database, this one has not caught up with the round named yet",
}


def invalid_request(errors: list[dict]) -> dict:
    """The 422 body of a request that breaks the schema (an :class:`ErrorBody`): the input is not echoed back, since
    it may hold NaN/Inf (not JSON) or be large."""
    fields = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors
    ]
    return {"detail": ERRORS["invalid_request"], "errors": fields}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for refusals, each with the one error body (:class:`ErrorBody`)."""
    return {code: {"model": ErrorBody, "description": _WHEN[code]} for code in codes}


# what each kind of endpoint can answer besides its success: a router's refusals, and a request body's (the
# middleware's limits) on the operations that take one
BODY_ERRORS = error_responses(400, 408, 413, 415)
DEVICE_ERRORS = error_responses(401, 403, 404, 409, 422, 429, 503)
ADMIN_ERRORS = error_responses(401, 403, 404, 422, 429, 503)
ENROL_ERRORS = {**BODY_ERRORS, **error_responses(403, 422, 429, 503)}
