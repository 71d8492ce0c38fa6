"""The round engine: the one run in progress, composed of parts that each do one job.

==========================  ==========================================================================================
``round_state.EngineContext``  what the parts share: model host, store, lock, the open round, counters, waiters
``lifecycle.RunLifecycle``     create a run, restore the latest one after a restart, read runs and round summaries
``uploads.UploadDesk``         accept report batches and Δθ frames (validation, idempotency, staleness)
``round_clock.RoundClock``     close/extend/fail rounds on quorum or deadline, aggregate, open the next round
``aggregation``                a round's inputs in canonical order → the run's strategy → θ_{r+1}
``guidance_store.GuidanceStore``  the rectifier's stored guidance: refs, frames, bases for replay
``waiters.RoundWaiters``       long polls woken on every change of round
``leader.Leadership``          in a shared database, which worker closes rounds; the others follow the store
==========================  ==========================================================================================

What a round means — who is guided, what devices upload, how θ moves — is the run's strategy object
(``cooperllm.strategies``); nothing here branches on a strategy's name. The rules are in docs/API.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, func, select

from cloud_api import db
from cloud_api.aggregation import counted_reports, round_directions, round_reports
from cloud_api.errors import ServiceError
from cloud_api.guidance_store import GuidanceStore
from cloud_api.leader import Leadership
from cloud_api.lifecycle import RunLifecycle
from cloud_api.model_host import ModelHost
from cloud_api.notify import RoundListener
from cloud_api.rectifier import Rectifier
from cloud_api.round_clock import RoundClock
from cloud_api.round_state import EngineContext, RoundState, load_seed_key, seed_range
from cloud_api.uploads import UploadDesk
from cooperllm.protocol import (
    GuidanceRef,
    ModelSync,
    ReportAck,
    ReportBatch,
    RoundInfo,
    RoundSummary,
    RunConfig,
    RunInfo,
    reports_from,
)
from cooperllm.zgr import Report

# a shared database: how often a worker looks at the store (the leader for the other workers' uploads, a follower for
# the round), and how often the leader checks that it still holds its lock
FOLLOW_S = 0.2
LEADER_CHECK_S = 1.0


class RoundEngine:
    """The API the routers call; each call is answered by the part that owns the job."""

    def __init__(
        self,
        host: ModelHost,
        engine: Engine,
        state_dir: Path,
        tick_s: float = 0.05,
        lossless_guidance: bool = False,
        shared: bool = False,
        fault_pause: tuple[str, float] | None = None,
    ):
        self.ctx = EngineContext(host, engine, Path(state_dir), load_seed_key(Path(state_dir)), shared=shared)
        self.guidance = GuidanceStore(engine)
        self.rectifier = Rectifier(
            host, engine, self.ctx.state_dir, on_done=lambda *_: self.ctx.wake.set(), lossless=lossless_guidance
        )
        self.leadership = Leadership(engine, shared)
        self.lifecycle = RunLifecycle(self.ctx, self.guidance, self.rectifier, leads=lambda: self.leadership.is_leader)
        self.uploads = UploadDesk(self.ctx)
        self.clock = RoundClock(self.ctx, self.guidance, self.rectifier, tick_s, self._lead_or_follow, fault_pause)
        self._sync_cache: dict[tuple[int, int], ModelSync] = {}
        self._next_look = self._next_check = 0.0  # monotonic times of the next look at the store (shared database)
        self.listener = RoundListener(engine, self._look_now) if shared else None

    # --- shared state, read by /health and /metrics ---------------------------------------------------------------

    host = property(lambda self: self.ctx.host)
    db = property(lambda self: self.ctx.db)
    lock = property(lambda self: self.ctx.lock)
    state = property(lambda self: self.ctx.state)
    run_status = property(lambda self: self.ctx.run_status)
    counters = property(lambda self: self.ctx.counters)
    rejected = property(lambda self: self.ctx.rejected)
    last_lambda = property(lambda self: self.ctx.last_lambda)
    started = property(lambda self: self.ctx.started)
    waiters = property(lambda self: self.ctx.waiters)

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.ctx.shared:
            self.leadership.try_lead()
        self.lifecycle.restore()
        self.clock.start()
        if self.listener is not None:
            self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.clock.stop()
        self.rectifier.stop()
        self.leadership.release()

    def _look_now(self) -> None:
        """Another worker changed the round (cloud_api.notify): look at the store at the next tick, now."""
        self._next_look = 0.0
        self.ctx.wake.set()

    def _lead_or_follow(self) -> bool:
        """Before each tick of the clock: whether this worker closes rounds. A service on its own always does; in a
        shared database the leader takes the other workers' uploads from the store, a follower tries to take over
        (and restores the round from the store when it wins) or else follows the store. Looks at the store every
        FOLLOW_S and checks the leader's lock every LEADER_CHECK_S, not every tick: each look is a query."""
        if not self.ctx.shared:
            return True
        now = time.monotonic()
        if self.leadership.is_leader:
            if now >= self._next_check:
                self._next_check = now + LEADER_CHECK_S
                if not self.leadership.still_leading():
                    return False
            if now >= self._next_look:
                self._next_look = now + FOLLOW_S
                self.lifecycle.refresh()
            return True
        if now < self._next_look:
            return False
        self._next_look = now + FOLLOW_S
        if self.leadership.try_lead():
            with self.ctx.lock:
                self.lifecycle.restore()
            self.ctx.waiters.notify()
            return True
        self.lifecycle.refresh()
        return False

    def tick(self) -> None:
        self.clock.tick()

    def create_run(self, cfg: RunConfig) -> RunInfo:
        return self.lifecycle.create_run(cfg)

    def run_info(self, run_id: int) -> RunInfo:
        return self.lifecycle.run_info(run_id)

    def round_summaries(self, run_id: int) -> list[RoundSummary]:
        return self.lifecycle.round_summaries(run_id)

    # --- uploads --------------------------------------------------------------------------------------------------

    def accept_reports(self, device_id: int, round_: int, batch: ReportBatch) -> ReportAck:
        return self.uploads.accept_reports(device_id, round_, batch)

    def accept_delta(self, device_id: int, round_: int, key: str, n_examples: int, frame: bytes) -> ReportAck:
        return self.uploads.accept_delta(device_id, round_, key, n_examples, frame)

    # --- device reads ---------------------------------------------------------------------------------------------

    def moved_past(self, round_: int, run_id: int | None = None) -> Callable[[], bool]:
        """A long-poll condition: the run is past round ``round_`` (a later round is open, or the run ended, failed
        or was replaced)."""
        ctx = self.ctx
        run_id = ctx.state.run_id if run_id is None and ctx.state is not None else run_id

        def done() -> bool:
            st = ctx.state
            return (
                st is None
                or st.run_id != run_id
                or st.round > round_
                or st.status in ("failed", "finished")
                or ctx.run_status != "running"
            )

        return done

    def round_info(self, device_id: int, artifact_hashes: dict[str, str]) -> RoundInfo:
        ctx = self.ctx
        with ctx.lock:
            st = ctx.current()
            lo, hi = seed_range(ctx.seed_key, st.cfg.seed, st.run_id, st.round, device_id)
            status = {"closing": "open"}.get(st.status, st.status)
            if ctx.run_status == "failed":
                status = "failed"
            return RoundInfo(
                run_id=st.run_id,
                round=st.round,
                status=status,
                strategy=st.cfg.strategy,
                epsilon=st.cfg.epsilon,
                local_steps=st.cfg.local_steps,
                blocks=st.blocks,
                directions=[d.name.lower() for d in st.plan.directions],
                batch_size=st.cfg.batch_size,
                deadline=st.deadline,
                seed_lo=lo,
                seed_hi=hi,
                theta_checksum=st.checksum,
                adapter_version=st.round,
                artifact_hashes=artifact_hashes,
                guidance=list(st.guidance),
                rounds_total=st.cfg.rounds,
            )

    def guidance_list(self, round_: int) -> list[GuidanceRef]:
        """Refs of a round's guidance (at most one round ahead), once the rectifier has stored all of it."""
        st = self.ctx.current()
        if round_ > st.round + 1:
            raise ServiceError(404, "unknown_round")
        refs = self.guidance.refs(st.run_id, round_)
        if not refs:
            raise ServiceError(404, "unknown_guidance")
        return refs

    def guidance_frame(self, round_: int, block: int) -> tuple[bytes, str]:
        st = self.ctx.current()
        found = self.guidance.frame(st.run_id, round_, block)
        if found is None:
            raise ServiceError(404, "unknown_guidance")
        return found

    def round_reports(self, st: RoundState) -> list[Report]:
        """Round ``st.round``'s reports as stored (before the round's clip), in aggregation order."""
        return round_reports(self.ctx.db, st.run_id, st.round)

    def sync(self, round_: int) -> ModelSync:
        """Everything a device needs to replay a closed round (cached: a closed round never changes)."""
        st = self.ctx.current()
        cached = self._sync_cache.get((st.run_id, round_))
        if cached is not None:
            return cached
        with self.ctx.db.connect() as conn:
            rnd = (
                conn.execute(select(db.rounds).where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == round_))
                .mappings()
                .first()
            )
        if rnd is None:
            raise ServiceError(404, "unknown_round")
        if rnd["status"] != "closed":
            raise ServiceError(409, "round_not_closed")
        strategy = st.strategy
        replayable = strategy.replayable
        outcome = json.loads(rnd["outcome"]) if rnd["outcome"] else None
        directions = round_directions(outcome, st)
        out = ModelSync(
            run_id=st.run_id,
            round=round_,
            strategy=st.cfg.strategy,
            replayable=replayable,
            lam=rnd["lam"],
            directions=[d.name.lower() for d in directions],
            reports=reports_from(counted_reports(self.ctx.db, st, round_, directions)) if replayable else [],
            guidance=self.guidance.for_aggregation(st.run_id, round_)[1] if strategy.guided else [],
            update=outcome["update"] if replayable and outcome else [],
            theta_checksum_before=rnd["theta_checksum"],
            theta_checksum_after=rnd["theta_checksum_after"],
        )
        self._sync_cache[(st.run_id, round_)] = out
        return out

    def adapter_file(self, version: int | None) -> tuple[Path, int]:
        st = self.ctx.current()
        v = st.round if version is None else version
        if v < 0 or v > st.round:
            raise ServiceError(404, "unknown_version")
        path = self.ctx.adapter_path(st.run_id, v)
        if not path.is_file():
            raise ServiceError(404, "unknown_version")
        return path, v

    # --- metrics --------------------------------------------------------------------------------------------------

    def count_reports(self) -> int:
        with self.ctx.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(db.reports)).scalar_one())

    def count_devices(self) -> int:
        with self.ctx.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(db.devices)).scalar_one())

    def rectifier_costs(self, last: int = 20) -> list[dict]:
        st = self.ctx.state
        if st is None:
            return []
        with self.ctx.db.connect() as conn:
            rows = (
                conn.execute(
                    select(db.rectifier_runs)
                    .where(db.rectifier_runs.c.run_id == st.run_id)
                    .order_by(db.rectifier_runs.c.round.desc())
                    .limit(last)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in reversed(rows)]
