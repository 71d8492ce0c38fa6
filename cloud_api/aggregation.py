"""A closed round's inputs, read back from the store in canonical order, and the strategy's aggregation of them.

Canonical order is what makes aggregation replayable: reports by (seed, block, step, device), deltas by device. The
store is the only source — the same rows give the same θ_{r+1} after a crash and restart. What a strategy aggregates,
and what a round's sync publishes, are the stored uploads bounded by the round's own statistics (``cooperllm.robust``).
"""

from __future__ import annotations

import json
import logging

from sqlalchemy import Engine, select

from cloud_api import db
from cloud_api.guidance_store import GuidanceStore
from cloud_api.round_state import RoundState
from cooperllm.layout import ParamLayout
from cooperllm.protocol import decode_tensor_frame, update_to_wire
from cooperllm.rectify import RectifierState
from cooperllm.robust import bound_reports, clip_deltas
from cooperllm.strategies import Aggregate, RoundInputs, Upload
from cooperllm.zgr import Report

log = logging.getLogger(__name__)


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


def counted_reports(engine: Engine, st: RoundState, round_: int) -> list[Report]:
    """Round ``round_`` of ``st``'s run as aggregated and published in its sync: the stored reports in canonical
    order less those beyond the round's robust bound (RunConfig.clip_k), so a replay applies what the cloud did."""
    return bound_reports(round_reports(engine, st.run_id, round_), st.plan.directions, st.cfg.clip_k)


def round_deltas(engine: Engine, run_id: int, round_: int) -> list[tuple[int, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.deltas.c.n_examples, db.deltas.c.frame)
            .where(db.deltas.c.run_id == run_id, db.deltas.c.round == round_)
            .order_by(db.deltas.c.device_id)
        ).all()
    return [(int(n), decode_tensor_frame(frame)) for n, frame in rows]


def round_outcome(engine: Engine, run_id: int, round_: int) -> dict | None:
    """A closed round's stored outcome {"update", "rectifier", "state"} (None before it closed)."""
    with engine.connect() as conn:
        raw = conn.execute(
            select(db.rounds.c.outcome).where(db.rounds.c.run_id == run_id, db.rounds.c.round == round_)
        ).scalar_one_or_none()
    return None if raw is None else json.loads(raw)


def outcome_json(agg: Aggregate) -> str:
    """What a closed round stores beside θ_{r+1}: the published update, the rectifier's numbers, the carried state."""
    return json.dumps(
        {
            "update": [u.model_dump() for u in update_to_wire(agg.update)],
            "rectifier": dict(agg.stats),
            "state": agg.state.to_json(),
        }
    )


def round_inputs(engine: Engine, guidance: GuidanceStore, st: RoundState) -> RoundInputs:
    """Everything the run's strategy aggregates for round ``st.round``: only what it uses is read. The rectifier's
    running estimates come from the previous round's stored outcome, so a restarted cloud carries on exactly."""
    strategy = st.strategy
    if strategy.upload is Upload.DELTA:
        return RoundInputs(deltas=clip_deltas(round_deltas(engine, st.run_id, st.round), st.cfg.clip_k))
    reports = []
    if strategy.upload is Upload.REPORTS:
        stored = round_reports(engine, st.run_id, st.round)
        reports = bound_reports(stored, st.plan.directions, st.cfg.clip_k)
        if len(reports) < len(stored):
            log.warning(
                "run %d round %d: %d of %d reports left out, beyond %g × their group's median |scalar|",
                st.run_id,
                st.round,
                len(stored) - len(reports),
                len(stored),
                st.cfg.clip_k,
            )
    previous = round_outcome(engine, st.run_id, st.round - 1) if st.round > 0 else None
    state = RectifierState.from_json(None if previous is None else previous.get("state"))
    if not strategy.guided:
        return RoundInputs(reports=reports, state=state)
    bases, _ = guidance.for_aggregation(st.run_id, st.round)
    return RoundInputs(reports=reports, guidance=bases, state=state)


def aggregate(engine: Engine, guidance: GuidanceStore, layout: ParamLayout, st: RoundState) -> Aggregate:
    """θ_{r+1} of the round ``st`` (its θ_r is ``st.theta``, left unchanged)."""
    return st.strategy.aggregate(st.theta, layout, st.cfg, round_inputs(engine, guidance, st))
