"""``Annotated`` dependencies: the app state, device and admin authentication, per-device rate limiting."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_api.engine import RoundEngine
from cloud_api.model_host import ModelHost
from cloud_api.security import DeviceRegistry, RateLimiter, same_secret
from cloud_api.settings import Settings
from cooperllm.protocol import ERRORS


@dataclass
class AppState:
    settings: Settings
    host: ModelHost
    engine: RoundEngine
    registry: DeviceRegistry
    limiter: RateLimiter


async def get_state(request: Request) -> AppState:
    return request.app.state.cooper


State = Annotated[AppState, Depends(get_state)]
_bearer = HTTPBearer(auto_error=False, description="device token from /v1/enroll, or the admin token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


AUTHENTICATED_DEVICE = "cooperllm_device"  # key of the request's state under which the middleware leaves the device


def _unauthenticated() -> HTTPException:
    return HTTPException(401, ERRORS["unauthenticated"], headers={"WWW-Authenticate": "Bearer"})


def authenticate_device(state: AppState, token: str | None, rate_limit: bool = True) -> int:
    """Device id for a bearer token, or the fixed 401/403/429 refusal (429: the device's rate limit, charged unless
    ``rate_limit`` is False). In-memory after a token's first use (token hashes are cached)."""
    if not token:
        raise _unauthenticated()
    if same_secret(token, state.settings.admin_token):
        raise HTTPException(403, ERRORS["forbidden"])
    found = state.registry.lookup(token)
    if found is None:
        raise _unauthenticated()
    dev, revoked = found
    if revoked:
        raise HTTPException(403, ERRORS["forbidden"])
    if rate_limit:
        charge(state, dev)
    return dev


def charge(state: AppState, key: object) -> None:
    """One request against ``key``'s rate limit (a device id, or a kind of request and a socket address); the fixed
    429 with Retry-After when its bucket is empty."""
    allowed, wait = state.limiter.allow(key)
    if not allowed:
        raise HTTPException(429, ERRORS["rate_limited"], headers={"Retry-After": str(max(1, math.ceil(wait)))})


def request_device(state: AppState, request: Request) -> int:
    """The device of a request: the one ``EarlyAuthMiddleware`` authenticated from the headers (requests with a
    body), else authenticated here; either way its rate limit is charged once."""
    dev = request.scope.get("state", {}).get(AUTHENTICATED_DEVICE)
    if dev is None:
        return authenticate_device(state, bearer_token(request))
    charge(state, dev)
    return dev


def bearer_token_from(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None for any other scheme)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def bearer_token(request: Request) -> str | None:
    return bearer_token_from(request.headers.get("authorization", ""))


async def device_id(state: State, request: Request, _: Credentials) -> int:
    """Async on purpose: no threadpool hop for an in-memory check. (``Credentials`` declares the bearer scheme in the
    OpenAPI document; the token is read by ``request_device``.)"""
    return request_device(state, request)


# For hot routes that authenticate inline (FastAPI's dependency solving costs more than the check itself).
BEARER_SECURITY = {"security": [{"HTTPBearer": []}]}


def authenticate_admin(state: AppState, token: str | None) -> None:
    """Nothing for the admin token; 403 for a device's token, 401 for anything else."""
    if not token:
        raise _unauthenticated()
    if same_secret(token, state.settings.admin_token):
        return
    if state.registry.lookup(token) is not None:
        raise HTTPException(403, ERRORS["forbidden"])
    raise _unauthenticated()


async def admin(state: State, creds: Credentials) -> None:
    authenticate_admin(state, creds.credentials if creds else None)


DeviceId = Annotated[int, Depends(device_id)]
Admin = Annotated[None, Depends(admin)]
