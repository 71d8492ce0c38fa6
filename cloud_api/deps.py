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


def authenticate_device(state: AppState, token: str | None) -> int:
    """Device id for a bearer token, or the fixed 401/403/429 refusal. In-memory only (token hashes are cached)."""
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
    allowed, wait = state.limiter.allow(dev)
    if not allowed:
        raise HTTPException(429, ERRORS["rate_limited"], headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return dev


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def device_id(state: State, creds: Credentials) -> int:
    """Async on purpose: no threadpool hop for an in-memory check."""
    return authenticate_device(state, creds.credentials if creds else None)


# For hot routes that authenticate inline (FastAPI's dependency solving costs more than the check itself).
BEARER_SECURITY = {"security": [{"HTTPBearer": []}]}


async def admin(state: State, creds: Credentials) -> None:
    if creds is None or not creds.credentials:
        raise _unauthenticated()
    if same_secret(creds.credentials, state.settings.admin_token):
        return
    if state.registry.lookup(creds.credentials) is not None:
        raise HTTPException(403, ERRORS["forbidden"])
    raise _unauthenticated()


DeviceId = Annotated[int, Depends(device_id)]
Admin = Annotated[None, Depends(admin)]
