"""The round clock: a background thread that closes a round at its quorum or deadline, extends or fails it, and
opens the next round after the aggregation.

Rules (also in docs/API.md): a round closes when ``quorum`` devices have sent all their uploads, or at its deadline if
at least ``min_devices`` devices reported; below that the deadline is extended up to ``max_extensions`` times, then the
round and the run fail (status ``failed``, logged at ERROR) — never silently. θ_{r+1} is written atomically
(safetensors) before the transaction that records the round's λ and checksums and opens round r+1 commits, so a crash
anywhere in between re-runs the same deterministic aggregation on restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from sqlalchemy import insert, update

from cloud_api import db
from cloud_api.aggregation import aggregate, outcome_json
from cloud_api.guidance_store import GuidanceStore
from cloud_api.lifecycle import device_counts
from cloud_api.notify import announce_round_change
from cloud_api.rectifier import Job, Rectifier
from cloud_api.round_state import EngineContext, RoundState
from cooperllm.checkpoint import save_theta
from cooperllm.layout import theta_checksum
from cooperllm.strategies import Aggregate

log = logging.getLogger(__name__)

CHECKPOINT_S = 1.0
GUIDANCE_WAIT_S = 3600.0


class RoundClock:
    def __init__(
        self,
        ctx: EngineContext,
        guidance: GuidanceStore,
        rectifier: Rectifier,
        tick_s: float = 0.05,
        lead: Callable[[], bool] = lambda: True,
        fault_pause: tuple[str, float] | None = None,
    ):
        self.ctx = ctx
        self.guidance = guidance
        self.rectifier = rectifier
        self.tick_s = tick_s
        self.lead = lead  # before each tick: whether this worker closes rounds (cloud_api.leader); False: it follows
        self.fault_pause = fault_pause  # (stage, seconds): the failover tests' window to kill a leader mid-close
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="round-clock", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.ctx.wake.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        last_checkpoint = time.monotonic()
        while not self._stop.is_set():
            self.ctx.wake.wait(self.tick_s)
            self.ctx.wake.clear()
            try:
                self.tick()
                if time.monotonic() - last_checkpoint > CHECKPOINT_S:
                    db.checkpoint_wal(self.ctx.db)  # here, not inside a request: its fsync never stalls an upload
                    last_checkpoint = time.monotonic()
            except Exception:
                log.exception("round clock failed")

    def tick(self) -> None:
        """Close, extend or fail the open round if its quorum or deadline says so (on the leader; a follower only
        follows the store), or finish closing one that a stopped leader left marked as closing."""
        if not self.lead():
            return
        ctx = self.ctx
        with ctx.lock:
            st = ctx.state
            if st is None or ctx.run_status != "running":
                return
            if st.status == "closing" and st.resume_close:
                st.resume_close, reason = False, "resumed after its leader stopped"
            elif st.status != "open":
                return
            else:
                reason = self._close_reason(st)
                if reason is None:
                    return
                st.status = "closing"
        self._mark_closing(st)
        self.close(st, reason)

    def _mark_closing(self, st: RoundState) -> None:
        """Store the round as closing before reading its uploads. In a shared database this waits for every upload
        in flight on any worker (each holds the round's row FOR SHARE until it commits) and refuses later ones, so
        the rows aggregated are all the round will ever have; the per-device counts are then taken from the store."""
        with self.ctx.db.begin() as conn:
            conn.execute(
                update(db.rounds)
                .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round, db.rounds.c.status == "open")
                .values(status="closing")
            )
            if self.ctx.shared:
                st.per_device = device_counts(conn, st.run_id, st.round)
        self._pause("closing")

    def _pause(self, stage: str) -> None:
        if self.fault_pause is not None and self.fault_pause[0] == stage:
            log.warning("fault injection: pausing %.1f s at %s", self.fault_pause[1], stage)
            time.sleep(self.fault_pause[1])

    def _close_reason(self, st: RoundState) -> str | None:
        """'quorum' or 'deadline' when the round should close now; None to wait (after extending or failing it)."""
        now = time.time()
        n_devices = len(st.per_device)
        if st.expected_per_device == 0:
            return "no device work"  # the strategy's round is the cloud's alone (its guidance is ready at the open)
        if st.complete_devices() >= st.cfg.quorum:
            return "quorum"
        if now < st.deadline:
            return None
        if n_devices >= st.cfg.min_devices:
            return "deadline"
        if st.extensions < st.cfg.max_extensions:
            self._extend(st, now)
        else:
            self.fail(
                st,
                f"round {st.round} ended with {n_devices} devices, fewer than min_devices="
                f"{st.cfg.min_devices}, after {st.extensions} extensions",
            )
        return None

    def _extend(self, st: RoundState, now: float) -> None:
        st.extensions += 1
        st.deadline = now + st.cfg.deadline_s
        with self.ctx.db.begin() as conn:
            conn.execute(
                update(db.rounds)
                .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
                .values(deadline=st.deadline, extensions=st.extensions)
            )
            announce_round_change(conn)
        self.ctx.counters["rounds_extended"] += 1
        log.warning(
            "round %d has %d of min %d devices at its deadline: extended (%d/%d)",
            st.round,
            len(st.per_device),
            st.cfg.min_devices,
            st.extensions,
            st.cfg.max_extensions,
        )

    def fail(self, st: RoundState, why: str) -> None:
        ctx = self.ctx
        log.error("run %d FAILED: %s", st.run_id, why)
        with ctx.db.begin() as conn:
            conn.execute(
                update(db.rounds)
                .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
                .values(status="failed", closed_at=time.time(), failure=why)
            )
            conn.execute(update(db.runs).where(db.runs.c.id == st.run_id).values(status="failed", failure=why))
            announce_round_change(conn)
        st.status = "failed"
        ctx.run_status, ctx.run_failure = "failed", why
        ctx.counters["rounds_failed"] += 1
        ctx.waiters.notify()

    def close(self, st: RoundState, reason: str) -> None:
        """Aggregate round r, store θ_{r+1}, wait for round r+1's guidance (guided runs), then open round r+1."""
        ctx = self.ctx
        t0 = time.perf_counter()
        agg = aggregate(ctx.db, self.guidance, ctx.host.layout, st)
        theta = agg.theta
        if not np.isfinite(theta).all():
            with ctx.lock:
                self.fail(st, f"aggregation of round {st.round} produced NaN/Inf; θ kept at round {st.round}")
            return
        nxt = st.round + 1
        save_theta(ctx.adapter_path(st.run_id, nxt), theta, ctx.host.layout)
        checksum = theta_checksum(theta)
        self._pause("saved")
        finished = nxt >= st.cfg.rounds
        guided = st.strategy.guided
        if guided and not finished:
            try:
                self.rectifier.wait_for(st.run_id, nxt, timeout=GUIDANCE_WAIT_S)
            except (RuntimeError, TimeoutError) as exc:
                with ctx.lock:
                    self.fail(st, f"no guidance for round {nxt}: {exc}")
                return
        agg_s = time.perf_counter() - t0
        with ctx.lock:
            now = time.time()
            self._record_close(st, agg, checksum, agg_s, finished, now)
            st.status = "closed"
            ctx.counters["rounds_closed"] += 1
            ctx.last_lambda = agg.lam
            new = RoundState(
                st.run_id,
                nxt,
                st.cfg,
                st.blocks,
                "finished" if finished else "open",
                now,
                now + st.cfg.deadline_s,
                0,
                theta,
                checksum,
                carried=agg.state,
            )
            if guided and not finished:
                new.guidance = self.guidance.refs(st.run_id, nxt)
            if ctx.state is st:
                ctx.state = new
                if finished:
                    ctx.run_status = "finished"
            ctx.waiters.notify()
            log.info(
                "round %d closed (%s): %d reports from %d devices, mean λ=%s, %.3f s; θ %s…",
                st.round,
                reason,
                agg.n_used,
                len(st.per_device),
                "-" if agg.lam is None else f"{agg.lam:.4f}",
                agg_s,
                checksum[:12],
            )
        if guided and nxt + 1 < st.cfg.rounds:
            self.rectifier.submit(Job(st.run_id, nxt + 1, nxt, theta.copy(), st.cfg))

    def _record_close(
        self, st: RoundState, agg: Aggregate, checksum: str, agg_s: float, finished: bool, now: float
    ) -> None:
        """One transaction: round r closed with its outcome and checksums, the run's current round moved, round r+1
        open."""
        nxt = st.round + 1
        with self.ctx.db.begin() as conn:
            conn.execute(
                update(db.rounds)
                .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
                .values(
                    status="closed",
                    closed_at=now,
                    n_reports=agg.n_used,
                    n_devices=len(st.per_device),
                    lam=agg.lam,
                    outcome=outcome_json(agg, st.plan.directions),
                    theta_checksum_after=checksum,
                    aggregate_s=agg_s,
                )
            )
            conn.execute(  # a run stopped meanwhile (a new run created on another worker) stays stopped
                update(db.runs)
                .where(db.runs.c.id == st.run_id, db.runs.c.status == "running")
                .values(current_round=nxt, status="finished" if finished else "running")
            )
            if not finished:
                conn.execute(
                    insert(db.rounds).values(
                        run_id=st.run_id,
                        round=nxt,
                        status="open",
                        opened_at=now,
                        deadline=now + st.cfg.deadline_s,
                        extensions=0,
                        theta_checksum=checksum,
                    )
                )
            announce_round_change(conn)
