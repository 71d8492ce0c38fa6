"""Backprop rectifier: a background worker that turns public-data gradients into per-block guidance (V_b, c_b).

Guidance for round k is computed at θ_{k−1} (θ₀ for k = 0) while round k−1 is still running, so devices never
wait for backprop. Per block it keeps a window of the most recent gradient vectors, takes the top-m left singular
vectors as V_b, publishes the *decoded* frame bytes and computes c_b = V_bᵀ ḡ_b with that decoded basis: what the
devices perturb along is exactly what the server aggregates with. Gradient sets are kept on disk (safetensors), and
minibatches are chosen from (run seed, round, k): a restarted server recomputes the same guidance.

Send only what changed (``RunConfig.guidance_tau`` > 0): a block whose new basis lies within subspace distance τ of
the previous round's version keeps that version — the same frame bytes, sha256 and guidance id, with c_b recomputed
on it — so devices that hold it download nothing, and every device and the server still perturb and replay with one
basis per block and round, bit for bit. Versions are chained from the stored previous round, so a restarted server
makes the same choices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from cloud_api import db
from cloud_api.model_host import ModelHost, minibatch_rows
from cooperllm.frames import decode_tensor_frame, encode_tensor_frame
from cooperllm.protocol import RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    run_id: int
    round: int  # guidance for this round
    theta_round: int
    theta: np.ndarray
    config: RunConfig


def orthonormal_basis(window: np.ndarray, m: int) -> np.ndarray:
    """Top-min(m, rank) left singular vectors of the n × w window (float32, orthonormal columns)."""
    u, s, _ = np.linalg.svd(window.astype(np.float64), full_matrices=False)
    keep = int(min(m, int(np.sum(s > s[0] * 1e-7)) if s.size and s[0] > 0 else 0))
    keep = max(keep, 1)
    basis = u[:, :keep]
    signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(keep)])  # deterministic sign
    return (basis * np.where(signs == 0, 1.0, signs)).astype(np.float32)


def subspace_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Chordal distance between the column spans of two n × m bases, in [0, 1]: √(1 − ‖QₐᵀQ_b‖²_F / m) with Q the
    orthonormalised bases (m = 1: |sin| of the angle); 1 when the ranks differ."""
    if a.shape != b.shape:
        return 1.0
    qa = np.linalg.qr(a.astype(np.float64))[0]
    qb = np.linalg.qr(b.astype(np.float64))[0]
    overlap = float(np.sum((qa.T @ qb) ** 2)) / a.shape[1]
    return float(np.sqrt(max(0.0, 1.0 - overlap)))


class Rectifier:
    """One worker thread; ``submit`` queues a job, ``wait_for`` blocks until guidance for (run, round) is stored."""

    def __init__(
        self,
        host: ModelHost,
        engine: Engine,
        state_dir: Path,
        on_done: Callable[[int, int], None],
        lossless: bool = False,
    ):
        self.host = host
        self.lossless = lossless  # plain float32 frames instead of DTC (the DTC-off arm of the experiments)
        self.engine = engine
        self.state_dir = state_dir
        self.on_done = on_done
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._done: set[tuple[int, int]] = set()
        self._errors: dict[tuple[int, int], str] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="rectifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def has_guidance(self, run_id: int, round_: int) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.rectifier_runs.c.round).where(
                    db.rectifier_runs.c.run_id == run_id, db.rectifier_runs.c.round == round_
                )
            ).first()
        return row is not None

    def submit(self, job: Job) -> None:
        if self.has_guidance(job.run_id, job.round):
            with self._cond:
                self._done.add((job.run_id, job.round))
                self._cond.notify_all()
            return
        self._queue.put(job)

    def wait_for(self, run_id: int, round_: int, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (run_id, round_) not in self._done:
                if (run_id, round_) in self._errors:
                    raise RuntimeError(f"rectifier failed for round {round_}: {self._errors[(run_id, round_)]}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"guidance for round {round_} not ready after {timeout} s")
                self._cond.wait(timeout=left if left is not None else 1.0)

    def compute_now(self, job: Job) -> None:
        """Synchronous variant (round 0's guidance, before the run opens)."""
        if not self.has_guidance(job.run_id, job.round):
            self._compute(job)
        with self._cond:
            self._done.add((job.run_id, job.round))
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                if not self.has_guidance(job.run_id, job.round):
                    self._compute(job)
                with self._cond:
                    self._done.add((job.run_id, job.round))
                    self._cond.notify_all()
                self.on_done(job.run_id, job.round)
            except Exception as exc:  # the engine reports it; the worker keeps serving other jobs
                log.exception("rectifier job for run %d round %d failed", job.run_id, job.round)
                with self._cond:
                    self._errors[(job.run_id, job.round)] = repr(exc)
                    self._cond.notify_all()

    # --- the work -------------------------------------------------------------------------------------------------

    def _grad_path(self, run_id: int, round_: int) -> Path:
        return self.state_dir / f"run{run_id}" / "grads" / f"set{round_:06d}.safetensors"

    def _gradient_set(self, job: Job) -> tuple[np.ndarray, int]:
        """(B × n) gradients for guidance round ``job.round``, from disk when a previous process computed them."""
        path = self._grad_path(job.run_id, job.round)
        if path.is_file():
            return load_file(str(path))["grads"], 0
        cfg = job.config
        grads = np.stack(
            [
                self.host.gradient(
                    job.theta, minibatch_rows(self.host.n_public, cfg.grad_batch_size, cfg.seed, job.round, k)
                )[0]
                for k in range(cfg.grad_batches)
            ]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"grads": grads}, str(tmp))
        tmp.replace(path)
        return grads, cfg.grad_batches

    def _window(self, job: Job, latest: np.ndarray) -> np.ndarray:
        rows = [latest]
        have = latest.shape[0]
        k = job.round - 1
        while have < job.config.window and k >= 0:
            path = self._grad_path(job.run_id, k)
            if not path.is_file():
                break
            older = load_file(str(path))["grads"]
            rows.append(older)
            have += older.shape[0]
            k -= 1
        return np.concatenate(rows)[: job.config.window]

    def _previous_versions(self, job: Job) -> dict[int, dict]:
        """Block → (frame, sha256, guidance_id) of the previous round's guidance, when versions may be kept."""
        if job.config.guidance_tau <= 0 or job.round == 0:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.guidance.c.block, db.guidance.c.frame, db.guidance.c.sha256, db.guidance.c.guidance_id).where(
                    db.guidance.c.run_id == job.run_id, db.guidance.c.round == job.round - 1
                )
            ).mappings()
            return {r["block"]: dict(r) for r in rows}

    def _compute(self, job: Job) -> None:
        t0 = time.perf_counter()
        grads, passes = self._gradient_set(job)
        window = self._window(job, grads)
        mean = grads.mean(axis=0)
        previous = self._previous_versions(job)
        rows = []
        cloud_var = 0.0
        rank = 0
        kept = 0
        for blk in self.host.layout.blocks:
            sl = blk.slice
            basis = orthonormal_basis(window[:, sl].T, job.config.guidance_rank)
            prev = previous.get(blk.index)
            held = None if prev is None else decode_tensor_frame(prev["frame"])
            if held is not None and subspace_distance(held, basis) < job.config.guidance_tau:
                # the basis barely moved: keep the version devices hold (same bytes), project the new gradient on it
                frame, decoded, sha, gid = bytes(prev["frame"]), held, prev["sha256"], prev["guidance_id"]
                kept += 1
            else:
                frame = encode_tensor_frame(basis, lossless=self.lossless)
                decoded = decode_tensor_frame(frame)  # what devices will see, and what aggregation will use
                sha = hashlib.sha256(frame).hexdigest()
                gid = f"r{job.round}b{blk.index}-{sha[:12]}"
            coeffs = (decoded.T.astype(np.float64) @ mean[sl].astype(np.float64)).astype(np.float32)
            coeff_var = np.zeros(decoded.shape[1])
            if grads.shape[0] > 1:  # τ_k²: the variance of the mean of B minibatch projections, per direction
                proj = grads[:, sl].astype(np.float64) @ decoded.astype(np.float64)  # B × m
                coeff_var = proj.var(axis=0, ddof=1) / grads.shape[0]
                cloud_var += float(coeff_var.sum())
            rank = max(rank, decoded.shape[1])
            rows.append(
                {
                    "run_id": job.run_id,
                    "round": job.round,
                    "block": blk.index,
                    "guidance_id": gid,
                    "sha256": sha,
                    "rows": int(decoded.shape[0]),
                    "m": int(decoded.shape[1]),
                    "coeffs": json.dumps([float(c) for c in coeffs]),
                    "coeff_var": json.dumps([float(v) for v in coeff_var]),
                    "frame": frame,
                }
            )
        seconds = time.perf_counter() - t0
        try:
            self._store(job, rows, seconds, passes, int(window.shape[0]), rank, cloud_var)
        except IntegrityError:  # another path stored the same (deterministic) guidance first
            log.info("guidance for run %d round %d was already stored", job.run_id, job.round)
            return
        log.info(
            "guidance for round %d (θ of round %d): %d backward passes, window %d, rank %d, %d of %d blocks kept "
            "their version, %.3f s",
            job.round,
            job.theta_round,
            passes,
            window.shape[0],
            rank,
            kept,
            len(rows),
            seconds,
        )

    def _store(
        self, job: Job, rows: list[dict], seconds: float, passes: int, window: int, rank: int, cloud_var: float
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(db.guidance), rows)
            conn.execute(
                insert(db.rectifier_runs).values(
                    run_id=job.run_id,
                    round=job.round,
                    theta_round=job.theta_round,
                    seconds=seconds,
                    backward_passes=passes,
                    window=window,
                    rank=rank,
                    cloud_var=cloud_var,
                )
            )
