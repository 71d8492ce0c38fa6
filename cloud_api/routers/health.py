"""Liveness (no auth)."""

from __future__ import annotations

from fastapi import APIRouter

from cloud_api.deps import State
from cooperllm.protocol import PROTOCOL_VERSION, Health

router = APIRouter(tags=["health"])


@router.get("/health", operation_id="get_health", response_model=Health)
async def health(state: State) -> Health:
    st = state.engine.state
    return Health(
        status="ok",
        protocol_version=PROTOCOL_VERSION,
        run_id=st.run_id if st else None,
        round=st.round if st else None,
        role="leader" if state.engine.leadership.is_leader else "follower",
    )
