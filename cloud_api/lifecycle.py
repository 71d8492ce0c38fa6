"""Run lifecycle: creating a run (θ₀ and round 0), restoring the latest run after a restart, and reading runs back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import func, insert, select, update

from cloud_api import db
from cloud_api.aggregation import carried_state
from cloud_api.errors import ServiceError
from cloud_api.guidance_store import GuidanceStore
from cloud_api.notify import announce_round_change
from cloud_api.rectifier import Job, Rectifier
from cloud_api.round_state import EngineContext, RoundState
from cooperllm.checkpoint import load_theta, save_theta
from cooperllm.layout import theta_checksum
from cooperllm.protocol import ERRORS, RoundSummary, RunConfig, RunInfo
from cooperllm.strategies import get_strategy

log = logging.getLogger(__name__)


class RunLifecycle:
    def __init__(
        self,
        ctx: EngineContext,
        guidance: GuidanceStore,
        rectifier: Rectifier,
        leads: Callable[[], bool] = lambda: True,
    ):
        self.ctx = ctx
        self.guidance = guidance
        self.rectifier = rectifier
        self.leads = leads  # whether this worker runs the rectifier (cloud_api.leader): a follower only reads

    def blocks(self, cfg: RunConfig) -> list[int]:
        """The blocks a run trains: every layout block separately by default; unknown blocks are refused."""
        n = len(self.ctx.host.layout.blocks)
        if cfg.blocks is None:
            return list(range(n))
        bad = [b for b in cfg.blocks if b >= n]
        if bad:
            detail = f"{ERRORS['no_such_block']}: {bad} (the layout has {n} blocks)"
            raise ServiceError(422, "no_such_block", detail)
        return list(cfg.blocks)

    def restore(self) -> None:
        """Pick up the latest run after a restart (or, in a shared database, a change another worker made): θ of its
        current round, counted reports, pending guidance. A round stored as ``closing`` was being aggregated when
        its leader stopped: the clock closes it again first (the same rows give the same θ_{r+1})."""
        ctx = self.ctx
        with ctx.db.connect() as conn:
            run = conn.execute(select(db.runs).order_by(db.runs.c.id.desc()).limit(1)).mappings().first()
            if run is None:
                return
            ctx.run_status, ctx.run_failure = run["status"], run["failure"]
            try:
                cfg = RunConfig.model_validate_json(run["config"])
            except ValidationError as exc:  # stored by an older version with other bounds: fail the run, serve on
                self._fail_unreadable(run["id"], exc)
                return
            r = run["current_round"]
            rnd = (
                conn.execute(select(db.rounds).where(db.rounds.c.run_id == run["id"], db.rounds.c.round == r))
                .mappings()
                .first()
            )
            theta = load_theta(ctx.adapter_path(run["id"], r), ctx.host.layout)
            st = RoundState(
                run_id=run["id"],
                round=r,
                cfg=cfg,
                blocks=self.blocks(cfg),
                status="finished" if run["status"] == "finished" else (rnd["status"] if rnd else "finished"),
                opened_at=rnd["opened_at"] if rnd else time.time(),
                deadline=rnd["deadline"] if rnd else time.time(),
                extensions=rnd["extensions"] if rnd else 0,
                theta=theta,
                checksum=theta_checksum(theta),
                carried=carried_state(ctx.db, run["id"], r),
                resume_close=rnd is not None and rnd["status"] == "closing",
            )
            if run["status"] == "stopped":
                return
            if rnd is not None:
                self._recount(conn, st, ctx.shared)
        if st.checksum != (rnd["theta_checksum"] if rnd else st.checksum):
            raise RuntimeError(f"adapter v{r} of run {st.run_id} does not match the checksum in the database")
        guided = st.strategy.guided
        st.guidance = self.guidance.refs(st.run_id, r) if guided else []
        st.n_complete = st.complete_devices()
        ctx.state = st
        if guided and st.status in ("open", "closing") and r + 1 < cfg.rounds and self.leads():
            self.rectifier.submit(Job(st.run_id, r + 1, r, st.theta.copy(), cfg))
        log.info(
            "restored run %d at round %d (%s, %d uploads counted)",
            st.run_id,
            r,
            st.status,
            sum(st.per_device.values()),
        )

    def refresh(self) -> None:
        """A shared database: bring this worker's view of the run in line with the store, where other workers open,
        extend, close and create. A new run or round is restored whole; the open round's deadline and status are
        copied; the leader also takes the uploads every worker counted (its quorum)."""
        ctx = self.ctx
        lead = self.leads()
        with ctx.db.connect() as conn:
            run = conn.execute(
                select(db.runs.c.id, db.runs.c.status, db.runs.c.current_round).order_by(db.runs.c.id.desc()).limit(1)
            ).first()
            if run is None:
                return
            rnd = conn.execute(
                select(db.rounds.c.status, db.rounds.c.deadline, db.rounds.c.extensions).where(
                    db.rounds.c.run_id == run.id, db.rounds.c.round == run.current_round
                )
            ).first()
            counts = device_counts(conn, run.id, run.current_round) if lead else None
        with ctx.lock:
            st = ctx.state
            if st is None or (st.run_id, st.round, ctx.run_status) != (run.id, run.current_round, run.status):
                self.restore()
                ctx.waiters.notify()
                return
            stored = None if rnd is None else (rnd.status, rnd.deadline, rnd.extensions)
            changed = not lead and stored is not None and stored != (st.status, st.deadline, st.extensions)
            if changed:
                st.status, st.deadline, st.extensions = stored
            if counts is not None and st.status == "open":
                st.per_device = counts
                st.n_complete = st.complete_devices()
        if changed:
            ctx.waiters.notify()

    def _fail_unreadable(self, run_id: int, exc: ValidationError) -> None:
        """Mark a run whose stored configuration no longer validates as failed, so the service starts without it."""
        failure = (
            f"stored run configuration is not valid: {exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
        )
        with self.ctx.db.begin() as conn:
            conn.execute(update(db.runs).where(db.runs.c.id == run_id).values(status="failed", failure=failure))
        self.ctx.run_status, self.ctx.run_failure = None, None
        log.error("run %d not restored: %s", run_id, failure)

    @staticmethod
    def _recount(conn, st: RoundState, shared: bool) -> None:
        """The uploads already counted in the open round, from the store: per device, and (a service on its own, which
        checks duplicates in memory) each report's key; workers sharing a database check keys in the database."""
        st.per_device = device_counts(conn, st.run_id, st.round)
        if shared:
            return
        keys = conn.execute(
            select(db.reports.c.device_id, db.reports.c.seed, db.reports.c.block, db.reports.c.step).where(
                db.reports.c.run_id == st.run_id, db.reports.c.round == st.round
            )
        ).all()
        for d, s, b, k in keys:
            st.seen.setdefault(d, set()).add((s, b, k))

    def create_run(self, cfg: RunConfig) -> RunInfo:
        """Stop the running run (if any), write θ₀ and open round 0 (with its guidance for guided strategies)."""
        ctx = self.ctx
        blocks = self.blocks(cfg)
        guided = get_strategy(cfg.strategy).guided
        with ctx.lock:
            with ctx.db.begin() as conn:
                conn.execute(update(db.runs).where(db.runs.c.status == "running").values(status="stopped"))
                run_id = conn.execute(
                    insert(db.runs).values(
                        config=cfg.model_dump_json(), status="running", current_round=0, created_at=time.time()
                    )
                ).inserted_primary_key[0]
            theta = ctx.host.theta0.copy()
            path = ctx.adapter_path(run_id, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_theta(path, theta, ctx.host.layout)
            if guided:
                self.rectifier.compute_now(Job(run_id, 0, 0, theta.copy(), cfg))
            checksum = theta_checksum(theta)
            with ctx.db.begin() as conn:
                conn.execute(
                    insert(db.rounds).values(
                        run_id=run_id,
                        round=0,
                        status="open",
                        opened_at=time.time(),
                        deadline=time.time() + cfg.deadline_s,
                        extensions=0,
                        theta_checksum=checksum,
                    )
                )
                announce_round_change(conn)
            ctx.state = RoundState(
                run_id, 0, cfg, blocks, "open", time.time(), time.time() + cfg.deadline_s, 0, theta, checksum
            )
            ctx.state.guidance = self.guidance.refs(run_id, 0) if guided else []
            ctx.run_status, ctx.run_failure = "running", None
            if guided and self.leads():  # a follower's new run: the leader takes it up from the store
                self.rectifier.submit(Job(run_id, 1, 0, theta.copy(), cfg))
            ctx.waiters.notify()
            log.info("run %d created: %s", run_id, cfg.model_dump_json())
            return self.run_info(run_id)

    def run_info(self, run_id: int) -> RunInfo:
        ctx = self.ctx
        with ctx.db.connect() as conn:
            run = conn.execute(select(db.runs).where(db.runs.c.id == run_id)).mappings().first()
            if run is None:
                raise ServiceError(404, "no_run", f"no run {run_id}")
            rnd = conn.execute(
                select(db.rounds.c.theta_checksum).where(
                    db.rounds.c.run_id == run_id, db.rounds.c.round == run["current_round"]
                )
            ).first()
        checksum = (
            rnd[0]
            if rnd
            else theta_checksum(load_theta(ctx.adapter_path(run_id, run["current_round"]), ctx.host.layout))
        )
        status = run["status"] if run["status"] != "stopped" else "finished"
        return RunInfo(
            run_id=run_id,
            status=status,
            config=_stored_config(run["config"]),
            current_round=run["current_round"],
            theta_checksum=checksum,
            n_params=ctx.host.layout.total,
            n_blocks=len(ctx.host.layout.blocks),
            failure=run["failure"],
        )

    def round_summaries(self, run_id: int) -> list[RoundSummary]:
        with self.ctx.db.connect() as conn:
            rows = (
                conn.execute(select(db.rounds).where(db.rounds.c.run_id == run_id).order_by(db.rounds.c.round))
                .mappings()
                .all()
            )
            rect = {
                r["round"]: r["seconds"]
                for r in conn.execute(select(db.rectifier_runs).where(db.rectifier_runs.c.run_id == run_id)).mappings()
            }
        if not rows:
            self.run_info(run_id)  # 404 when the run does not exist
        return [
            RoundSummary(
                round=r["round"],
                status=r["status"],
                opened_at=r["opened_at"],
                deadline=r["deadline"],
                closed_at=r["closed_at"],
                extensions=r["extensions"],
                n_reports=r["n_reports"],
                n_devices=r["n_devices"],
                lam=r["lam"],
                rectifier=None if r["outcome"] is None else json.loads(r["outcome"]).get("rectifier") or None,
                theta_checksum=r["theta_checksum"],
                theta_checksum_after=r["theta_checksum_after"],
                rectifier_s=rect.get(r["round"]),
                aggregate_s=r["aggregate_s"],
                failure=r["failure"],
            )
            for r in rows
        ]


def device_counts(conn, run_id: int, round_: int) -> dict[int, int]:
    """Per device, the uploads the store holds for a round (reports, or one Δθ frame): what every worker counted."""
    counts = {
        int(d): int(n)
        for d, n in conn.execute(
            select(db.reports.c.device_id, func.count())
            .where(db.reports.c.run_id == run_id, db.reports.c.round == round_)
            .group_by(db.reports.c.device_id)
        ).all()
    }
    for (d,) in conn.execute(
        select(db.deltas.c.device_id).where(db.deltas.c.run_id == run_id, db.deltas.c.round == round_)
    ).all():
        counts[int(d)] = 1
    return counts


def _stored_config(raw: str) -> RunConfig | None:
    """A stored run's configuration, or None where it no longer validates (``restore`` failed that run)."""
    try:
        return RunConfig.model_validate_json(raw)
    except ValidationError:
        return None
