"""A closed round's inputs, read back from the store in canonical order, and the strategy's aggregation of them.

Canonical order is what makes aggregation replayable: reports by (seed, block, step, device), deltas by device. The
store is the only source — the same rows give the same θ_{r+1} after a crash and restart. What a strategy aggregates,
and what a round's sync publishes, are the stored uploads bounded by the round's own statistics (``cooperllm.robust``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from sqlalchemy import Engine, select

from cloud_api import db
from cloud_api.guidance_store import GuidanceStore
from cloud_api.round_state import RoundState
from cooperllm.frames import decode_tensor_frame
from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction
from cooperllm.protocol import update_to_wire
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


def counted_reports(engine: Engine, st: RoundState, round_: int, directions: Sequence[Direction]) -> list[Report]:
    """Round ``round_`` of ``st``'s run as aggregated and published in its sync: the stored reports in canonical
    order less those beyond the round's robust bound (RunConfig.clip_k; groups by the round's ``directions``), so a
    replay applies what the cloud did."""
    return bound_reports(round_reports(engine, st.run_id, round_), directions, st.cfg.clip_k)


def round_directions(outcome: dict | None, st: RoundState) -> tuple[Direction, ...]:
    """The directions a closed round measured, as its outcome records them (outcomes stored before a round's
    directions could vary hold none: the strategy's own)."""
    names = (outcome or {}).get("directions")
    return tuple(Direction[n.upper()] for n in names) if names else st.strategy.directions


def carried_state(engine: Engine, run_id: int, round_: int) -> RectifierState | None:
    """What the rectifier carried into round ``round_`` (the round before's stored state; None for round 0)."""
    previous = round_outcome(engine, run_id, round_ - 1) if round_ > 0 else None
    return None if previous is None else RectifierState.from_json(previous.get("state"))


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


def outcome_json(agg: Aggregate, directions: Sequence[Direction]) -> str:
    """What a closed round stores beside θ_{r+1}: the published update, the rectifier's numbers, the carried state,
    and the directions the round measured (its sync names them)."""
    return json.dumps(
        {
            "update": [u.model_dump() for u in update_to_wire(agg.update)],
            "rectifier": dict(agg.stats),
            "state": agg.state.to_json(),
            "directions": [d.name.lower() for d in directions],
        }
    )


def round_inputs(engine: Engine, guidance: GuidanceStore, st: RoundState) -> RoundInputs:
    """Everything the run's strategy aggregates for round ``st.round``: only what it uses is read. The rectifier's
    running estimates are those the round carries (``st.carried``: the previous round's stored outcome after a restart),
    so a restarted cloud carries on exactly."""
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
    state, directions = st.carried or RectifierState(), st.plan.directions
    if not strategy.guided:
        return RoundInputs(reports=reports, state=state, directions=directions)
    bases, _ = guidance.for_aggregation(st.run_id, st.round)
    return RoundInputs(reports=reports, guidance=bases, state=state, directions=directions)


def aggregate(engine: Engine, guidance: GuidanceStore, layout: ParamLayout, st: RoundState) -> Aggregate:
    """θ_{r+1} of the round ``st`` (its θ_r is ``st.theta``, left unchanged)."""
    return st.strategy.aggregate(st.theta, layout, st.cfg, round_inputs(engine, guidance, st))
