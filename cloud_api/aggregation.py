"""A closed round's inputs, read back from the store in canonical order, and the strategy's aggregation of them.

Canonical order is what makes aggregation replayable: reports by (seed, block, step, device), deltas by device. The
store is the only source — the same rows give the same θ_{r+1} after a crash and restart.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from cloud_api import db
from cloud_api.guidance_store import GuidanceStore
from cloud_api.round_state import RoundState
from cooperllm.layout import ParamLayout
from cooperllm.protocol import decode_tensor_frame
from cooperllm.strategies import Aggregate, RoundInputs, Upload
from cooperllm.zgr import Report


def round_reports(engine: Engine, run_id: int, round_: int) -> list[Report]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                db.reports.c.seed,
                db.reports.c.block,
                db.reports.c.step,
                db.reports.c.scalar,
                db.reports.c.n_examples,
            )
            .where(db.reports.c.run_id == run_id, db.reports.c.round == round_)
            .order_by(db.reports.c.seed, db.reports.c.block, db.reports.c.step, db.reports.c.device_id)
        ).all()
    return [Report(int(s), int(b), int(k), float(p), int(n)) for s, b, k, p, n in rows]


def round_deltas(engine: Engine, run_id: int, round_: int) -> list[tuple[int, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.deltas.c.n_examples, db.deltas.c.frame)
            .where(db.deltas.c.run_id == run_id, db.deltas.c.round == round_)
            .order_by(db.deltas.c.device_id)
        ).all()
    return [(int(n), decode_tensor_frame(frame)) for n, frame in rows]


def round_inputs(engine: Engine, guidance: GuidanceStore, st: RoundState) -> RoundInputs:
    """Everything the run's strategy aggregates for round ``st.round``: only what it uses is read."""
    strategy = st.strategy
    if strategy.upload is Upload.DELTA:
        return RoundInputs(deltas=round_deltas(engine, st.run_id, st.round))
    reports = round_reports(engine, st.run_id, st.round) if strategy.upload is Upload.REPORTS else []
    if not strategy.guided:
        return RoundInputs(reports=reports)
    bases, _ = guidance.for_aggregation(st.run_id, st.round)
    return RoundInputs(reports=reports, guidance=bases, cloud_var=guidance.cloud_var(st.run_id, st.round))


def aggregate(engine: Engine, guidance: GuidanceStore, layout: ParamLayout, st: RoundState) -> Aggregate:
    """θ_{r+1} of the round ``st`` (its θ_r is ``st.theta``, left unchanged)."""
    return st.strategy.aggregate(st.theta, layout, st.cfg, round_inputs(engine, guidance, st))
