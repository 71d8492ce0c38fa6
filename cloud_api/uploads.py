"""The upload desk: report batches and Δθ frames from devices, validated whole, then counted in one transaction.

Idempotency: a batch is keyed by (device, idempotency key) in the store; a retry with the same body is answered from
the store (``replay=true``) and counts nothing again, whenever it arrives; the same key with another body is refused.
Staleness rule ``drop``: an upload for a round that is closed (or closing) is refused with 409 and counted as late.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from cloud_api import db
from cloud_api.round_state import EngineContext, RoundState, seed_range
from cooperllm.frames import FrameError, decode_tensor_frame
from cooperllm.protocol import ERRORS, ReportAck, ReportBatch
from cooperllm.strategies import Upload
from cooperllm.zgr import ReportError, check_report

_INSERT_BATCH = db.upload_batches.insert()  # built once: the upload path runs hundreds of times a second
_INSERT_REPORTS = db.reports.insert()
UPLOAD_LOCK = 0x43_6F_75  # pg_advisory_xact_lock(UPLOAD_LOCK, device): one device's uploads counted one at a time


@dataclass
class _Tally:
    """A report batch split against what the device already counted: rows to insert, duplicates, clipped scalars."""

    rows: list[dict] = field(default_factory=list)
    fresh: set[tuple[int, int, int]] = field(default_factory=set)
    duplicates: int = 0
    clipped: int = 0


class UploadDesk:
    def __init__(self, ctx: EngineContext):
        self.ctx = ctx

    def _check_round(self, st: RoundState, round_: int, n_reports: int) -> None:
        ctx = self.ctx
        if ctx.run_status == "failed":
            raise ctx.reject(409, "run_failed", f"{ERRORS['run_failed']}: {ctx.run_failure}")
        if round_ < st.round or (round_ == st.round and st.status != "open"):
            ctx.counters["late_reports"] += n_reports
            raise ctx.reject(409, "round_closed")
        if round_ > st.round:
            if ctx.shared and self._store_has_round(st.run_id, round_):
                # another worker opened it and this one has not looked at the store since: the retry will find it
                raise ctx.reject(503, "round_not_seen")
            raise ctx.reject(404, "unknown_round")

    def _store_has_round(self, run_id: int, round_: int) -> bool:
        with self.ctx.db.connect() as conn:
            current = conn.execute(select(db.runs.c.current_round).where(db.runs.c.id == run_id)).scalar_one_or_none()
        return current is not None and current >= round_

    def _check_upload_kind(self, st: RoundState, kind: Upload) -> None:
        if st.strategy.upload is not kind:
            raise self.ctx.reject(409, "wrong_strategy")

    def _replayed(self, conn, device_id: int, key: str, body_sha: str) -> ReportAck | None:
        row = (
            conn.execute(
                select(db.upload_batches).where(
                    db.upload_batches.c.device_id == device_id, db.upload_batches.c.idempotency_key == key
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        if row["body_sha256"] != body_sha:
            raise self.ctx.reject(409, "idempotency_conflict")
        self.ctx.counters["idempotent_replays"] += 1
        status = "open"
        st = self.ctx.state
        if st is None or row["round"] != st.round or row["run_id"] != st.run_id or st.status != "open":
            status = "closed"
        return ReportAck(
            round=row["round"],
            accepted=0,
            duplicates=row["duplicates"],
            replay=True,
            clipped=row["clipped"],
            round_status=status,
        )

    def _replay_of(self, device_id: int, key: str, body_sha: str) -> ReportAck | None:
        with self.ctx.db.connect() as conn:
            return self._replayed(conn, device_id, key, body_sha)

    def accept_reports(self, device_id: int, round_: int, batch: ReportBatch) -> ReportAck:
        """Validate the whole batch, then count it in one transaction (committed before the answer)."""
        body_sha = hashlib.sha256(
            repr([(r.seed, r.block, r.step, r.scalar, r.n_examples) for r in batch.reports]).encode()
        ).hexdigest()
        if self.ctx.shared:
            return self._accept_reports_shared(device_id, round_, batch, body_sha)
        ctx = self.ctx
        with ctx.lock:
            st = ctx.current()
            if round_ != st.round or st.status != "open" or ctx.run_status != "running":
                replay = self._replay_of(device_id, batch.idempotency_key, body_sha)  # maybe a retry of an accepted one
                if replay is not None:
                    return replay
            self._check_round(st, round_, len(batch.reports))
            self._check_upload_kind(st, Upload.REPORTS)
            seen = st.seen.setdefault(device_id, set())
            tally = self._tally(st, device_id, batch, seen, st.per_device.get(device_id, 0))
            try:
                with ctx.db.begin() as conn:
                    self._insert(conn, st, device_id, batch.idempotency_key, body_sha, tally)
            except IntegrityError:  # the idempotency key exists: a retry of a batch already counted
                replay = self._replay_of(device_id, batch.idempotency_key, body_sha)
                if replay is None:
                    raise
                return replay
            seen |= tally.fresh
            before = st.per_device.get(device_id, 0)
            st.per_device[device_id] = before + len(tally.rows)
            if before < st.expected_per_device <= st.per_device[device_id]:
                st.n_complete += 1
            if st.n_complete >= st.cfg.quorum:
                ctx.wake.set()  # close now rather than at the next tick
            return self._counted(st, tally)

    def _accept_reports_shared(self, device_id: int, round_: int, batch: ReportBatch, body_sha: str) -> ReportAck:
        """The same rules with the round's counts in the database, which every worker shares: the upload holds the
        round's row FOR SHARE (the leader marks it closing only after every upload in flight has committed, and no
        upload counts after that) and the device's advisory lock (two workers never count one device's quota at
        once); duplicates and quota are read from the stored reports. A retry is found by the idempotency key's
        unique index (or, once the round is closed, looked up), which saves a query on every first upload."""
        ctx = self.ctx
        st = ctx.current()
        try:
            with ctx.db.begin() as conn:
                if round_ != st.round or not self._hold_open_round(conn, st, device_id):
                    replay = self._replayed(conn, device_id, batch.idempotency_key, body_sha)
                    if replay is not None:
                        return replay
                    self._check_round(st, round_, len(batch.reports))  # failed, closed or unknown here
                    ctx.counters["late_reports"] += len(batch.reports)  # open here, closing in the store
                    raise ctx.reject(409, "round_closed")
                self._check_upload_kind(st, Upload.REPORTS)
                seen = {
                    (int(s), int(b), int(k))
                    for s, b, k in conn.execute(
                        select(db.reports.c.seed, db.reports.c.block, db.reports.c.step).where(
                            db.reports.c.run_id == st.run_id,
                            db.reports.c.round == st.round,
                            db.reports.c.device_id == device_id,
                        )
                    ).all()
                }
                tally = self._tally(st, device_id, batch, seen, len(seen))
                self._insert(conn, st, device_id, batch.idempotency_key, body_sha, tally)
        except IntegrityError:  # the key was counted before (here or on another worker): a retry
            replay = self._replay_of(device_id, batch.idempotency_key, body_sha)
            if replay is None:
                raise
            return replay
        return self._counted(st, tally)

    def _hold_open_round(self, conn, st: RoundState, device_id: int) -> bool:
        """Shared database: whether the round is still open in the store, holding its row FOR SHARE and the device's
        upload lock until the transaction ends (one statement)."""
        status = conn.execute(
            select(db.rounds.c.status, func.pg_advisory_xact_lock(UPLOAD_LOCK, device_id))
            .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
            .with_for_update(read=True, of=db.rounds)
        ).first()
        return status is not None and status[0] == "open"

    def _tally(self, st: RoundState, device_id: int, batch: ReportBatch, seen: set, counted: int) -> _Tally:
        """Check every report, then split the batch into fresh rows and duplicates of ``seen`` (the device's stored
        (seed, block, step) keys); refuses the batch when fresh rows would take the device past its quota."""
        ctx, cfg = self.ctx, st.cfg
        seeds = seed_range(ctx.seed_key, cfg.seed, st.run_id, st.round, device_id)
        allowed = set(st.blocks)
        tally = _Tally()
        for r in batch.reports:
            try:
                check_report(
                    r,
                    blocks=allowed,
                    local_steps=cfg.local_steps * len(st.plan.directions),
                    seeds=seeds,
                    max_abs_scalar=cfg.max_abs_scalar,
                )
            except ReportError as exc:
                raise ctx.reject(422, exc.key) from exc
            key = (r.seed, r.block, r.step)
            if key in seen or key in tally.fresh:
                tally.duplicates += 1
                continue
            if counted + len(tally.fresh) >= st.expected_per_device:
                # exactly what the round asks: extra reports would let one device outweigh the others
                raise ctx.reject(409, "report_quota")
            tally.fresh.add(key)
            scalar, was_clipped = r.scalar, False
            if cfg.clip_scalar is not None and abs(scalar) > cfg.clip_scalar:
                scalar, was_clipped = float(np.clip(scalar, -cfg.clip_scalar, cfg.clip_scalar)), True
                tally.clipped += 1
            tally.rows.append(
                {
                    "run_id": st.run_id,
                    "round": st.round,
                    "device_id": device_id,
                    "seed": r.seed,
                    "block": r.block,
                    "step": r.step,
                    "scalar": scalar,
                    "n_examples": r.n_examples,
                    "clipped": was_clipped,
                }
            )
        return tally

    @staticmethod
    def _insert(conn, st: RoundState, device_id: int, key: str, body_sha: str, tally: _Tally) -> None:
        batch_id = conn.execute(
            _INSERT_BATCH,
            {
                "device_id": device_id,
                "idempotency_key": key,
                "run_id": st.run_id,
                "round": st.round,
                "body_sha256": body_sha,
                "accepted": len(tally.rows),
                "duplicates": tally.duplicates,
                "clipped": tally.clipped,
                "created_at": time.time(),
            },
        ).inserted_primary_key[0]
        if tally.rows:
            for row in tally.rows:
                row["batch_id"] = batch_id
            conn.execute(_INSERT_REPORTS, tally.rows)

    def _counted(self, st: RoundState, tally: _Tally) -> ReportAck:
        self.ctx.counters["uploads_total"] += 1
        self.ctx.counters["duplicates"] += tally.duplicates
        return ReportAck(
            round=st.round,
            accepted=len(tally.rows),
            duplicates=tally.duplicates,
            replay=False,
            clipped=tally.clipped,
            round_status="open",
        )

    def accept_delta(self, device_id: int, round_: int, key: str, n_examples: int, frame: bytes) -> ReportAck:
        ctx = self.ctx
        n_values = ctx.host.layout.total
        body_sha = hashlib.sha256(frame + str(n_examples).encode()).hexdigest()
        with ctx.lock:
            st = ctx.current()
            replay = self._replay_of(device_id, key, body_sha)
            if replay is not None:
                return replay
            self._check_round(st, round_, 1)
            self._check_upload_kind(st, Upload.DELTA)
            if n_examples > st.cfg.local_steps * st.cfg.batch_size:  # caps the upload's FedAvg weight
                raise ctx.reject(422, "too_many_examples")
            try:
                delta = decode_tensor_frame(frame, max_elements=n_values)
            except FrameError as exc:
                raise ctx.reject(422, "bad_frame", f"{ERRORS['bad_frame']}: {exc}") from exc
            if delta.shape != (n_values,):
                raise ctx.reject(
                    422, "bad_frame", f"{ERRORS['bad_frame']}: delta must have shape ({n_values},), got {delta.shape}"
                )
            if not np.isfinite(delta).all():
                raise ctx.reject(422, "bad_frame", f"{ERRORS['bad_frame']}: delta has NaN or infinite values")
            with ctx.db.begin() as conn:
                if ctx.shared:  # the frames every worker counted are in the store (see _accept_reports_shared)
                    if not self._hold_open_round(conn, st, device_id):
                        ctx.counters["late_reports"] += 1
                        raise ctx.reject(409, "round_closed")
                    dup = (
                        conn.execute(
                            select(db.deltas.c.id).where(
                                db.deltas.c.run_id == st.run_id,
                                db.deltas.c.round == st.round,
                                db.deltas.c.device_id == device_id,
                            )
                        ).first()
                        is not None
                    )
                else:
                    dup = device_id in st.per_device
                batch_id = conn.execute(
                    insert(db.upload_batches).values(
                        device_id=device_id,
                        idempotency_key=key,
                        run_id=st.run_id,
                        round=st.round,
                        body_sha256=body_sha,
                        accepted=0 if dup else 1,
                        duplicates=1 if dup else 0,
                        clipped=0,
                        created_at=time.time(),
                    )
                ).inserted_primary_key[0]
                if not dup:
                    conn.execute(
                        insert(db.deltas).values(
                            run_id=st.run_id,
                            round=st.round,
                            device_id=device_id,
                            n_examples=n_examples,
                            frame=frame,
                            batch_id=batch_id,
                        )
                    )
            if not dup and not ctx.shared:
                st.n_complete += 1
            if not ctx.shared:
                st.per_device[device_id] = 1
            ctx.counters["uploads_total"] += 1
            ctx.wake.set()
            return ReportAck(
                round=st.round,
                accepted=0 if dup else 1,
                duplicates=1 if dup else 0,
                replay=False,
                round_status="open",
            )
