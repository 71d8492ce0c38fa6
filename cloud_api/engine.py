"""Round engine: the one run in progress, its open round, report acceptance, closing and aggregation.

Rules (also in docs/API.md):

* A round closes when ``quorum`` devices have sent all their reports (``local_steps × len(blocks)``), or at its
  deadline if at least ``min_devices`` devices reported; below that the deadline is extended up to
  ``max_extensions`` times, then the round and the run fail (status ``failed``, logged at ERROR) — never silently.
* Staleness rule ``drop``: a report for a round that is closed (or closing) is refused with 409 and counted as late;
  a re-upload of an already accepted batch (same device and idempotency key) is answered from the store with
  ``replay=true`` and counts nothing again, whenever it arrives.
* Aggregation replays the reports in canonical order (seed, block, step, device) with ``cooperllm.zgr.apply_round``
  and the exact guidance bytes the devices downloaded, writes θ_{r+1} atomically (safetensors), and commits the
  round's λ and checksums in the same transaction that opens round r+1. A crash anywhere in between re-runs the same
  deterministic aggregation on restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from cloud_api import db
from cloud_api.model_host import ModelHost
from cloud_api.rectifier import Job, Rectifier
from cooperllm.checkpoint import load_theta, save_theta
from cooperllm.layout import theta_checksum
from cooperllm.protocol import (
    ERRORS,
    FrameError,
    GuidanceRef,
    ModelSync,
    ReportAck,
    ReportBatch,
    ReportIn,
    RoundInfo,
    RoundSummary,
    RunConfig,
    RunInfo,
    SyncGuidance,
    decode_tensor_frame,
)
from cooperllm.zgr import BlockGuidance, Report, apply_round, online_lambda

log = logging.getLogger(__name__)

SEEDS_PER_DEVICE = 1 << 16
CHECKPOINT_S = 1.0
_INSERT_BATCH = db.upload_batches.insert()  # built once: the upload path runs hundreds of times a second
_INSERT_REPORTS = db.reports.insert()


class ServiceError(Exception):
    """An API-level refusal: HTTP status and the key of a fixed message in ``protocol.ERRORS``."""

    def __init__(self, status: int, key: str, detail: str | None = None):
        super().__init__(detail or ERRORS[key])
        self.status = status
        self.key = key
        self.detail = detail or ERRORS[key]


def seed_range(run_seed: int, run_id: int, round_: int, device_id: int) -> tuple[int, int]:
    """This device's seeds for the round: a 2^16-wide slice of [0, 2^63) chosen by hashing (run, round, device)."""
    h = hashlib.blake2b(f"{run_seed}:{run_id}:{round_}:{device_id}".encode(), digest_size=8).digest()
    lo = (int.from_bytes(h, "little") & ((1 << 47) - 1)) << 16
    return lo, lo + SEEDS_PER_DEVICE


@dataclass
class RoundState:
    run_id: int
    round: int
    cfg: RunConfig
    blocks: list[int]
    status: str  # open | closing | closed | failed | finished
    opened_at: float
    deadline: float
    extensions: int
    theta: np.ndarray
    checksum: str
    seen: set[tuple[int, int, int, int]] = field(default_factory=set)
    per_device: dict[int, int] = field(default_factory=dict)
    guidance: list[GuidanceRef] = field(default_factory=list)
    n_complete: int = 0

    @property
    def expected_per_device(self) -> int:
        return 1 if self.cfg.strategy == "bp" else self.cfg.local_steps * len(self.blocks)

    def complete_devices(self) -> int:
        need = self.expected_per_device
        return sum(1 for n in self.per_device.values() if n >= need)


class RoundWaiters:
    """Long-poll support: asyncio tasks wait for a change of round (opened, closed, failed, finished), and the engine,
    on whatever thread it runs, wakes them through their event loops. A waiter costs an event, not a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    async def wait(self, done: Callable[[], bool], timeout: float) -> None:
        """Return when ``done()`` holds or after ``timeout`` seconds, whichever comes first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            left = end - loop.time()
            if left <= 0:
                return
            entry = (loop, asyncio.Event())
            with self._lock:
                self._waiters.add(entry)
            try:
                if done():  # changed between the look and the registration
                    return
                await asyncio.wait_for(entry[1].wait(), left)
            except TimeoutError:
                return
            finally:
                with self._lock:
                    self._waiters.discard(entry)


class RoundEngine:
    def __init__(
        self, host: ModelHost, engine: Engine, state_dir: Path, tick_s: float = 0.05, lossless_guidance: bool = False
    ):
        self.host = host
        self.db = engine
        self.state_dir = Path(state_dir)
        self.tick_s = tick_s
        self.lock = threading.RLock()
        self.state: RoundState | None = None
        self.run_status: str | None = None
        self.run_failure: str | None = None
        self.started = time.time()
        self.counters = {
            "uploads_total": 0,
            "idempotent_replays": 0,
            "duplicates": 0,
            "late_reports": 0,
            "rounds_closed": 0,
            "rounds_failed": 0,
            "rounds_extended": 0,
        }
        self.rejected: dict[str, int] = {}
        self.last_lambda: float | None = None
        self._sync_cache: dict[tuple[int, int], ModelSync] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.waiters = RoundWaiters()
        self.rectifier = Rectifier(
            host, engine, self.state_dir, on_done=lambda *_: self._wake.set(), lossless=lossless_guidance
        )
        self._ticker = threading.Thread(target=self._tick_loop, name="round-clock", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._restore()
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._ticker.join(timeout=30)
        self.rectifier.stop()

    def _adapter_path(self, run_id: int, version: int) -> Path:
        return self.state_dir / f"run{run_id}" / "adapters" / f"v{version:06d}.safetensors"

    def _restore(self) -> None:
        """Pick up the latest run after a restart: θ of its current round, counted reports, pending guidance."""
        with self.db.connect() as conn:
            run = conn.execute(select(db.runs).order_by(db.runs.c.id.desc()).limit(1)).mappings().first()
            if run is None:
                return
            self.run_status, self.run_failure = run["status"], run["failure"]
            cfg = RunConfig.model_validate_json(run["config"])
            r = run["current_round"]
            rnd = (
                conn.execute(select(db.rounds).where(db.rounds.c.run_id == run["id"], db.rounds.c.round == r))
                .mappings()
                .first()
            )
            theta = load_theta(self._adapter_path(run["id"], r), self.host.layout)
            st = RoundState(
                run_id=run["id"],
                round=r,
                cfg=cfg,
                blocks=self._blocks(cfg),
                status="finished" if run["status"] == "finished" else (rnd["status"] if rnd else "finished"),
                opened_at=rnd["opened_at"] if rnd else time.time(),
                deadline=rnd["deadline"] if rnd else time.time(),
                extensions=rnd["extensions"] if rnd else 0,
                theta=theta,
                checksum=theta_checksum(theta),
            )
            if run["status"] == "stopped":
                return
            if rnd is not None:
                keys = conn.execute(
                    select(db.reports.c.device_id, db.reports.c.seed, db.reports.c.block, db.reports.c.step).where(
                        db.reports.c.run_id == run["id"], db.reports.c.round == r
                    )
                ).all()
                for d, s, b, k in keys:
                    st.seen.add((d, s, b, k))
                    st.per_device[d] = st.per_device.get(d, 0) + 1
                for (d,) in conn.execute(
                    select(db.deltas.c.device_id).where(db.deltas.c.run_id == run["id"], db.deltas.c.round == r)
                ).all():
                    st.per_device[d] = 1
        if st.checksum != (rnd["theta_checksum"] if rnd else st.checksum):
            raise RuntimeError(f"adapter v{r} of run {st.run_id} does not match the checksum in the database")
        st.guidance = self._guidance_refs(st.run_id, r) if cfg.strategy == "zgr" else []
        st.n_complete = st.complete_devices()
        self.state = st
        if cfg.strategy == "zgr" and st.status == "open":
            self.rectifier.submit(Job(st.run_id, r + 1, r, st.theta.copy(), cfg))
        log.info("restored run %d at round %d (%s, %d reports counted)", st.run_id, r, st.status, len(st.seen))

    def _blocks(self, cfg: RunConfig) -> list[int]:
        n = len(self.host.layout.blocks)
        if cfg.blocks is None:
            return list(range(n))
        bad = [b for b in cfg.blocks if b >= n]
        if bad:
            raise ServiceError(422, "unknown_block", f"blocks {bad} do not exist: the layout has {n} blocks")
        return list(cfg.blocks)

    # --- admin --------------------------------------------------------------------------------------------------

    def create_run(self, cfg: RunConfig) -> RunInfo:
        blocks = self._blocks(cfg)
        with self.lock:
            now = time.time()
            with self.db.begin() as conn:
                conn.execute(update(db.runs).where(db.runs.c.status == "running").values(status="stopped"))
                run_id = conn.execute(
                    insert(db.runs).values(
                        config=cfg.model_dump_json(), status="running", current_round=0, created_at=now
                    )
                ).inserted_primary_key[0]
            theta = self.host.theta0.copy()
            path = self._adapter_path(run_id, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_theta(path, theta, self.host.layout)
            if cfg.strategy == "zgr":
                self.rectifier.compute_now(Job(run_id, 0, 0, theta.copy(), cfg))
            checksum = theta_checksum(theta)
            with self.db.begin() as conn:
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
            self.state = RoundState(
                run_id, 0, cfg, blocks, "open", time.time(), time.time() + cfg.deadline_s, 0, theta, checksum
            )
            self.state.guidance = self._guidance_refs(run_id, 0) if cfg.strategy == "zgr" else []
            self.run_status, self.run_failure = "running", None
            if cfg.strategy == "zgr":
                self.rectifier.submit(Job(run_id, 1, 0, theta.copy(), cfg))
            self.waiters.notify()
            log.info("run %d created: %s", run_id, cfg.model_dump_json())
            return self.run_info(run_id)

    def run_info(self, run_id: int) -> RunInfo:
        with self.db.connect() as conn:
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
            else theta_checksum(load_theta(self._adapter_path(run_id, run["current_round"]), self.host.layout))
        )
        status = run["status"] if run["status"] != "stopped" else "finished"
        return RunInfo(
            run_id=run_id,
            status=status,
            config=RunConfig.model_validate_json(run["config"]),
            current_round=run["current_round"],
            theta_checksum=checksum,
            n_params=self.host.layout.total,
            n_blocks=len(self.host.layout.blocks),
            failure=run["failure"],
        )

    def round_summaries(self, run_id: int) -> list[RoundSummary]:
        with self.db.connect() as conn:
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
                theta_checksum=r["theta_checksum"],
                theta_checksum_after=r["theta_checksum_after"],
                rectifier_s=rect.get(r["round"]),
                aggregate_s=r["aggregate_s"],
                failure=r["failure"],
            )
            for r in rows
        ]

    # --- device reads -------------------------------------------------------------------------------------------

    def _current(self) -> RoundState:
        st = self.state
        if st is None:
            raise ServiceError(404, "no_run")
        return st

    def moved_past(self, round_: int, run_id: int | None = None) -> Callable[[], bool]:
        """A long-poll condition: the run is past round ``round_`` (a later round is open, or the run ended, failed
        or was replaced)."""
        run_id = self.state.run_id if run_id is None and self.state is not None else run_id

        def done() -> bool:
            st = self.state
            return (
                st is None
                or st.run_id != run_id
                or st.round > round_
                or st.status in ("failed", "finished")
                or self.run_status != "running"
            )

        return done

    def round_info(self, device_id: int, artifact_hashes: dict[str, str]) -> RoundInfo:
        with self.lock:
            st = self._current()
            lo, hi = seed_range(st.cfg.seed, st.run_id, st.round, device_id)
            status = {"closing": "open"}.get(st.status, st.status)
            if self.run_status == "failed":
                status = "failed"
            zo = st.cfg.strategy == "zo"
            return RoundInfo(
                run_id=st.run_id,
                round=st.round,
                status=status,
                strategy=st.cfg.strategy,
                epsilon=st.cfg.epsilon,
                local_steps=st.cfg.local_steps,
                blocks=st.blocks,
                alpha=1.0 if zo else st.cfg.alpha,
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

    def _guidance_refs(self, run_id: int, round_: int) -> list[GuidanceRef]:
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

    def guidance_list(self, round_: int) -> list[GuidanceRef]:
        """Refs of a round's guidance (at most one round ahead), once the rectifier has stored all of it."""
        st = self._current()
        if round_ > st.round + 1:
            raise ServiceError(404, "unknown_round")
        refs = self._guidance_refs(st.run_id, round_)
        if not refs:
            raise ServiceError(404, "unknown_guidance")
        return refs

    def guidance_frame(self, round_: int, block: int) -> tuple[bytes, str]:
        st = self._current()
        with self.db.connect() as conn:
            row = conn.execute(
                select(db.guidance.c.frame, db.guidance.c.guidance_id).where(
                    db.guidance.c.run_id == st.run_id, db.guidance.c.round == round_, db.guidance.c.block == block
                )
            ).first()
        if row is None:
            raise ServiceError(404, "unknown_guidance")
        return bytes(row[0]), row[1]

    def _guidance_for_aggregation(
        self, run_id: int, round_: int
    ) -> tuple[dict[int, BlockGuidance], list[SyncGuidance]]:
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
            out[r["block"]] = BlockGuidance(decode_tensor_frame(r["frame"]), np.asarray(coeffs, dtype=np.float32))
            refs.append(SyncGuidance(block=r["block"], guidance_id=r["guidance_id"], sha256=r["sha256"], coeffs=coeffs))
        return out, refs

    # --- uploads ------------------------------------------------------------------------------------------------

    def _reject(self, status: int, key: str, detail: str | None = None) -> ServiceError:
        self.rejected[key] = self.rejected.get(key, 0) + 1
        return ServiceError(status, key, detail)

    def _check_round(self, st: RoundState, round_: int, n_reports: int) -> None:
        if self.run_status == "failed":
            raise self._reject(409, "run_failed", f"{ERRORS['run_failed']}: {self.run_failure}")
        if round_ < st.round or (round_ == st.round and st.status != "open"):
            self.counters["late_reports"] += n_reports
            raise self._reject(409, "round_closed")
        if round_ > st.round:
            raise self._reject(404, "unknown_round")

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
            raise self._reject(409, "idempotency_conflict")
        self.counters["idempotent_replays"] += 1
        status = "open"
        st = self.state
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

    def accept_reports(self, device_id: int, round_: int, batch: ReportBatch) -> ReportAck:
        """Validate the whole batch, then count it in one transaction (committed before the answer)."""
        body_sha = hashlib.sha256(
            repr([(r.seed, r.block, r.step, r.scalar, r.n_examples) for r in batch.reports]).encode()
        ).hexdigest()
        with self.lock:
            st = self._current()
            if round_ != st.round or st.status != "open" or self.run_status != "running":
                with self.db.connect() as conn:  # slow path: maybe a retry of a batch accepted earlier
                    replay = self._replayed(conn, device_id, batch.idempotency_key, body_sha)
                if replay is not None:
                    return replay
            self._check_round(st, round_, len(batch.reports))
            if st.cfg.strategy == "bp":
                raise self._reject(409, "wrong_strategy")
            cfg = st.cfg
            lo, hi = seed_range(cfg.seed, st.run_id, st.round, device_id)
            allowed = set(st.blocks)
            rows, clipped, dups = [], 0, 0
            fresh: set[tuple[int, int, int, int]] = set()
            for r in batch.reports:
                if r.block not in allowed:
                    raise self._reject(422, "unknown_block")
                if r.step >= cfg.local_steps:
                    raise self._reject(422, "bad_step")
                if not lo <= r.seed < hi:
                    raise self._reject(422, "seed_out_of_range")
                if abs(r.scalar) > cfg.max_abs_scalar:
                    raise self._reject(422, "scalar_out_of_range")
                key = (device_id, r.seed, r.block, r.step)
                if key in st.seen or key in fresh:
                    dups += 1
                    continue
                fresh.add(key)
                scalar, was_clipped = r.scalar, False
                if cfg.clip_scalar is not None and abs(scalar) > cfg.clip_scalar:
                    scalar, was_clipped = float(np.clip(scalar, -cfg.clip_scalar, cfg.clip_scalar)), True
                    clipped += 1
                rows.append(
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
            try:
                with self.db.begin() as conn:
                    batch_id = conn.execute(
                        _INSERT_BATCH,
                        {
                            "device_id": device_id,
                            "idempotency_key": batch.idempotency_key,
                            "run_id": st.run_id,
                            "round": st.round,
                            "body_sha256": body_sha,
                            "accepted": len(rows),
                            "duplicates": dups,
                            "clipped": clipped,
                            "created_at": time.time(),
                        },
                    ).inserted_primary_key[0]
                    if rows:
                        for row in rows:
                            row["batch_id"] = batch_id
                        conn.execute(_INSERT_REPORTS, rows)
            except IntegrityError:  # the idempotency key exists: a retry of a batch already counted
                with self.db.connect() as conn:
                    replay = self._replayed(conn, device_id, batch.idempotency_key, body_sha)
                if replay is None:
                    raise
                return replay
            st.seen |= fresh
            before = st.per_device.get(device_id, 0)
            st.per_device[device_id] = before + len(rows)
            if before < st.expected_per_device <= st.per_device[device_id]:
                st.n_complete += 1
            self.counters["uploads_total"] += 1
            self.counters["duplicates"] += dups
            if st.n_complete >= st.cfg.quorum:
                self._wake.set()  # close now rather than at the next tick
            return ReportAck(
                round=st.round,
                accepted=len(rows),
                duplicates=dups,
                replay=False,
                clipped=clipped,
                round_status="open",
            )

    def accept_delta(self, device_id: int, round_: int, key: str, n_examples: int, frame: bytes) -> ReportAck:
        body_sha = hashlib.sha256(frame + str(n_examples).encode()).hexdigest()
        with self.lock:
            st = self._current()
            with self.db.connect() as conn:
                replay = self._replayed(conn, device_id, key, body_sha)
            if replay is not None:
                return replay
            self._check_round(st, round_, 1)
            if st.cfg.strategy != "bp":
                raise self._reject(409, "wrong_strategy")
            try:
                delta = decode_tensor_frame(frame, max_elements=self.host.layout.total)
            except FrameError as exc:
                raise self._reject(422, "bad_frame", f"{ERRORS['bad_frame']}: {exc}") from exc
            if delta.shape != (self.host.layout.total,):
                raise self._reject(
                    422,
                    "bad_frame",
                    f"{ERRORS['bad_frame']}: delta must have shape ({self.host.layout.total},), got {delta.shape}",
                )
            dup = device_id in st.per_device
            with self.db.begin() as conn:
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
            if not dup:
                st.n_complete += 1
            st.per_device[device_id] = 1
            self.counters["uploads_total"] += 1
            self._wake.set()
            return ReportAck(
                round=st.round,
                accepted=0 if dup else 1,
                duplicates=1 if dup else 0,
                replay=False,
                round_status="open",
            )

    # --- closing and aggregation --------------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        last_checkpoint = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
            try:
                self.tick()
                if time.monotonic() - last_checkpoint > CHECKPOINT_S:
                    db.checkpoint_wal(self.db)  # here, not inside a request: its fsync never stalls an upload
                    last_checkpoint = time.monotonic()
            except Exception:
                log.exception("round clock failed")

    def tick(self) -> None:
        with self.lock:
            st = self.state
            if st is None or st.status != "open" or self.run_status != "running":
                return
            now = time.time()
            n_devices = len(st.per_device)
            if st.complete_devices() >= st.cfg.quorum:
                reason = "quorum"
            elif now >= st.deadline:
                if n_devices >= st.cfg.min_devices:
                    reason = "deadline"
                elif st.extensions < st.cfg.max_extensions:
                    st.extensions += 1
                    st.deadline = now + st.cfg.deadline_s
                    with self.db.begin() as conn:
                        conn.execute(
                            update(db.rounds)
                            .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
                            .values(deadline=st.deadline, extensions=st.extensions)
                        )
                    self.counters["rounds_extended"] += 1
                    log.warning(
                        "round %d has %d of min %d devices at its deadline: extended (%d/%d)",
                        st.round,
                        n_devices,
                        st.cfg.min_devices,
                        st.extensions,
                        st.cfg.max_extensions,
                    )
                    return
                else:
                    self._fail(
                        st,
                        f"round {st.round} ended with {n_devices} devices, fewer than min_devices="
                        f"{st.cfg.min_devices}, after {st.extensions} extensions",
                    )
                    return
            else:
                return
            st.status = "closing"
        self._close(st, reason)

    def _fail(self, st: RoundState, why: str) -> None:
        log.error("run %d FAILED: %s", st.run_id, why)
        with self.db.begin() as conn:
            conn.execute(
                update(db.rounds)
                .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
                .values(status="failed", closed_at=time.time(), failure=why)
            )
            conn.execute(update(db.runs).where(db.runs.c.id == st.run_id).values(status="failed", failure=why))
        st.status = "failed"
        self.run_status, self.run_failure = "failed", why
        self.counters["rounds_failed"] += 1
        self.waiters.notify()

    def _round_reports(self, st: RoundState) -> list[Report]:
        with self.db.connect() as conn:
            rows = conn.execute(
                select(
                    db.reports.c.seed,
                    db.reports.c.block,
                    db.reports.c.step,
                    db.reports.c.scalar,
                    db.reports.c.n_examples,
                )
                .where(db.reports.c.run_id == st.run_id, db.reports.c.round == st.round)
                .order_by(db.reports.c.seed, db.reports.c.block, db.reports.c.step, db.reports.c.device_id)
            ).all()
        return [Report(int(s), int(b), int(k), float(p), int(n)) for s, b, k, p, n in rows]

    def _aggregate(self, st: RoundState) -> tuple[np.ndarray, float, int]:
        """θ_{r+1}, λ and the number of reports/deltas used."""
        cfg = st.cfg
        theta = st.theta.copy()
        if cfg.strategy == "bp":
            with self.db.connect() as conn:
                rows = conn.execute(
                    select(db.deltas.c.n_examples, db.deltas.c.frame)
                    .where(db.deltas.c.run_id == st.run_id, db.deltas.c.round == st.round)
                    .order_by(db.deltas.c.device_id)
                ).all()
            total = sum(n for n, _ in rows)
            acc = np.zeros_like(theta, dtype=np.float64)
            for n, frame in rows:
                acc += (n / total) * decode_tensor_frame(frame).astype(np.float64)
            theta += np.float32(cfg.eta) * acc.astype(np.float32)
            return theta, 0.0, len(rows)
        reports = self._round_reports(st)
        if cfg.strategy == "zo":
            apply_round(theta, self.host.layout, reports, {}, 1.0, 0.0, cfg.eta)
            return theta, 0.0, len(reports)
        guidance, _ = self._guidance_for_aggregation(st.run_id, st.round)
        if cfg.lam == "auto":
            with self.db.connect() as conn:
                cloud_var = conn.execute(
                    select(db.rectifier_runs.c.cloud_var).where(
                        db.rectifier_runs.c.run_id == st.run_id, db.rectifier_runs.c.round == st.round
                    )
                ).scalar_one()
            lam, terms = online_lambda(self.host.layout, reports, guidance, cfg.alpha, cloud_var, cfg.lam_max)
            log.info("round %d online λ* = %.4f (%s)", st.round, lam, terms)
        else:
            lam = float(cfg.lam)
        apply_round(theta, self.host.layout, reports, guidance, cfg.alpha, lam, cfg.eta)
        return theta, lam, len(reports)

    def _close(self, st: RoundState, reason: str) -> None:
        t0 = time.perf_counter()
        theta, lam, n_used = self._aggregate(st)
        if not np.isfinite(theta).all():
            with self.lock:
                self._fail(st, f"aggregation of round {st.round} produced NaN/Inf; θ kept at round {st.round}")
            return
        nxt = st.round + 1
        path = self._adapter_path(st.run_id, nxt)
        save_theta(path, theta, self.host.layout)
        checksum = theta_checksum(theta)
        finished = nxt >= st.cfg.rounds
        if st.cfg.strategy == "zgr" and not finished:
            try:
                self.rectifier.wait_for(st.run_id, nxt, timeout=3600)
            except (RuntimeError, TimeoutError) as exc:
                with self.lock:
                    self._fail(st, f"no guidance for round {nxt}: {exc}")
                return
        agg_s = time.perf_counter() - t0
        with self.lock:
            now = time.time()
            with self.db.begin() as conn:
                conn.execute(
                    update(db.rounds)
                    .where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == st.round)
                    .values(
                        status="closed",
                        closed_at=now,
                        n_reports=n_used,
                        n_devices=len(st.per_device),
                        lam=lam,
                        theta_checksum_after=checksum,
                        aggregate_s=agg_s,
                    )
                )
                conn.execute(
                    update(db.runs)
                    .where(db.runs.c.id == st.run_id)
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
            st.status = "closed"
            self.counters["rounds_closed"] += 1
            self.last_lambda = lam
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
            )
            if st.cfg.strategy == "zgr" and not finished:
                new.guidance = self._guidance_refs(st.run_id, nxt)
            if self.state is st:
                self.state = new
                if finished:
                    self.run_status = "finished"
            self.waiters.notify()
            log.info(
                "round %d closed (%s): %d reports from %d devices, λ=%.4f, %.3f s; θ %s…",
                st.round,
                reason,
                n_used,
                len(st.per_device),
                lam,
                agg_s,
                checksum[:12],
            )
        if st.cfg.strategy == "zgr" and nxt + 1 < st.cfg.rounds:
            self.rectifier.submit(Job(st.run_id, nxt + 1, nxt, theta.copy(), st.cfg))

    # --- sync and adapters ----------------------------------------------------------------------------------------

    def sync(self, round_: int) -> ModelSync:
        st = self._current()
        cached = self._sync_cache.get((st.run_id, round_))
        if cached is not None:
            return cached
        with self.db.connect() as conn:
            rnd = (
                conn.execute(select(db.rounds).where(db.rounds.c.run_id == st.run_id, db.rounds.c.round == round_))
                .mappings()
                .first()
            )
        if rnd is None:
            raise ServiceError(404, "unknown_round")
        if rnd["status"] != "closed":
            raise ServiceError(409, "round_not_closed")
        cfg = st.cfg
        fake = RoundState(st.run_id, round_, cfg, st.blocks, "closed", 0, 0, 0, st.theta, "")
        reports = [] if cfg.strategy == "bp" else self._round_reports(fake)
        refs = self._guidance_for_aggregation(st.run_id, round_)[1] if cfg.strategy == "zgr" else []
        out = ModelSync(
            run_id=st.run_id,
            round=round_,
            strategy=cfg.strategy,
            replayable=cfg.strategy != "bp",
            alpha=1.0 if cfg.strategy == "zo" else cfg.alpha,
            lam=rnd["lam"] or 0.0,
            eta=cfg.eta,
            reports=[
                ReportIn(seed=r.seed, block=r.block, step=r.step, scalar=r.scalar, n_examples=r.n_examples)
                for r in reports
            ],
            guidance=refs,
            theta_checksum_before=rnd["theta_checksum"],
            theta_checksum_after=rnd["theta_checksum_after"],
        )
        self._sync_cache[(st.run_id, round_)] = out
        return out

    def adapter_file(self, version: int | None) -> tuple[Path, int]:
        st = self._current()
        v = st.round if version is None else version
        if v < 0 or v > st.round:
            raise ServiceError(404, "unknown_version")
        path = self._adapter_path(st.run_id, v)
        if not path.is_file():
            raise ServiceError(404, "unknown_version")
        return path, v

    def count_reports(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(db.reports)).scalar_one())

    def count_devices(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(db.devices)).scalar_one())

    def rectifier_costs(self, last: int = 20) -> list[dict]:
        st = self.state
        if st is None:
            return []
        with self.db.connect() as conn:
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
