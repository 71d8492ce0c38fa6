"""Reads of the guidance the rectifier stored: refs for devices, frames, and the bases the aggregation replays with."""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import Engine, select

from cloud_api import db
from cooperllm.frames import decode_tensor_frame
from cooperllm.protocol import GuidanceRef, SyncGuidance
from cooperllm.zgr import BlockGuidance


class GuidanceStore:
    def __init__(self, engine: Engine):
        self.db = engine

    def refs(self, run_id: int, round_: int) -> list[GuidanceRef]:
        with self.db.connect() as conn:
            rows = conn.execute(
                select(
                    db.guidance.c.block,
                    db.guidance.c.guidance_id,
                    db.guidance.c.sha256,
                    db.guidance.c.rows,
                    db.guidance.c.m,
                )
                .where(db.guidance.c.run_id == run_id, db.guidance.c.round == round_)
                .order_by(db.guidance.c.block)
            ).all()
        return [GuidanceRef(block=b, guidance_id=g, sha256=s, rows=n, m=m) for b, g, s, n, m in rows]

    def frame(self, run_id: int, round_: int, block: int) -> tuple[bytes, str] | None:
        with self.db.connect() as conn:
            row = conn.execute(
                select(db.guidance.c.frame, db.guidance.c.guidance_id).where(
                    db.guidance.c.run_id == run_id, db.guidance.c.round == round_, db.guidance.c.block == block
                )
            ).first()
        return None if row is None else (bytes(row[0]), row[1])

    def for_aggregation(self, run_id: int, round_: int) -> tuple[dict[int, BlockGuidance], list[SyncGuidance]]:
        """The decoded bases with their coefficients (what the server replays with) and the sync records."""
        with self.db.connect() as conn:
            rows = (
                conn.execute(
                    select(db.guidance)
                    .where(db.guidance.c.run_id == run_id, db.guidance.c.round == round_)
                    .order_by(db.guidance.c.block)
                )
                .mappings()
                .all()
            )
        out, refs = {}, []
        for r in rows:
            coeffs = json.loads(r["coeffs"])
            var = None if r["coeff_var"] is None else np.asarray(json.loads(r["coeff_var"]), dtype=np.float64)
            out[r["block"]] = BlockGuidance(
                decode_tensor_frame(r["frame"]), np.asarray(coeffs, dtype=np.float32), coeff_var=var
            )
            refs.append(SyncGuidance(block=r["block"], guidance_id=r["guidance_id"], sha256=r["sha256"], coeffs=coeffs))
        return out, refs
