"""A device's side of a closed round's sync record (``GET /v1/rounds/{r}/sync``): the record turned back into the core's
reports, guidance and published update, and θ_r → θ_{r+1} replayed from them, bit for bit as the server applied it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction
from cooperllm.protocol import ModelSync
from cooperllm.strategies import get_strategy
from cooperllm.zgr import BlockGuidance, BlockUpdate, Report


def sync_reports(sync: ModelSync) -> list[Report]:
    return [r.to_report() for r in sync.reports]


def sync_guidance(sync: ModelSync, bases: Mapping[int, np.ndarray]) -> dict[int, BlockGuidance]:
    """Pair the decoded guidance frames the device holds (block → V) with the round's coefficients."""
    out = {}
    for g in sync.guidance:
        if g.block not in bases:
            raise ValueError(f"missing guidance basis for block {g.block} ({g.guidance_id})")
        basis = np.ascontiguousarray(bases[g.block], dtype=np.float32)
        out[g.block] = BlockGuidance(basis, np.asarray(g.coeffs, dtype=np.float32))
    return out


def sync_update(sync: ModelSync) -> dict[int, BlockUpdate]:
    return {u.block: BlockUpdate(u.q, None if u.w is None else np.asarray(u.w, dtype=np.float32)) for u in sync.update}


def sync_directions(sync: ModelSync) -> tuple[Direction, ...]:
    return tuple(Direction[d.upper()] for d in sync.directions)


def replay_sync(theta: np.ndarray, layout: ParamLayout, sync: ModelSync, bases: Mapping[int, np.ndarray]) -> None:
    """θ_r → θ_{r+1} in place from round r's sync record and the guidance bases the device holds (block → V)."""
    get_strategy(sync.strategy).replay(
        theta, layout, sync_reports(sync), sync_guidance(sync, bases), sync_update(sync), sync_directions(sync)
    )
