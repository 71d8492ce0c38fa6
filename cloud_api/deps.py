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
    if not rate_limit:
        return dev
    allowed, wait = state.limiter.allow(dev)
    if not allowed:
        raise HTTPException(429, ERRORS["rate_limited"], headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return dev


def bearer_token_from(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None for any other scheme)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def bearer_token(request: Request) -> str | None:
    return bearer_token_from(request.headers.get("authorization", ""))


async def device_id(state: State, creds: Credentials) -> int:
    """Async on purpose: no threadpool hop for an in-memory check."""
    return authenticate_device(state, creds.credentials if creds else None)


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
