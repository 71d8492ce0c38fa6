"""Standalone mode: federated-free MeZO on one device, with periodic evaluation and a resumable state.

The reference for ZO speed and the simplest end-to-end check that the exported graph learns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cooperllm.evaluate import EvalResult, PairedChange, evaluate, paired_change
from cooperllm.tokenization import TokenizedCorpus
from device_runtime.backends.base import GraphBackend
from device_runtime.batches import BatchSchedule
from device_runtime.engine import NonFiniteLossError, ZOConfig, ZOEngine
from device_runtime.state import DeviceState, StateError, load_state, save_state

log = logging.getLogger(__name__)

RUNNING_MEAN_STEPS = 20  # steps averaged in the progress bar's loss


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    zo: ZOConfig = field(default_factory=ZOConfig)
    data_seed: int = 0
    eval_every: int = 0  # 0: evaluate only before and after
    save_every: int = 10  # steps between state checkpoints (when a state folder is given)
    # Steps over which the learning rate halves (0: constant). A decay that does not depend on the step budget, so a
    # resumed run with a larger --steps continues the same trajectory. Why decay at all: at a constant rate the
    # random-walk part of ZO's updates keeps growing with the adapter (SmolLM2 causal-lm-cls at lr 1e-3 gains 1.4 pp
    # by step 500, then falls 10 pp below zero-shot by step 1000).
    lr_half_life: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr_half_life < 0:
            raise ValueError(f"lr_half_life must be >= 0 steps, got {self.lr_half_life}")

    def lr_at(self, step: int) -> float:
        return self.zo.lr * 0.5 ** (step / self.lr_half_life) if self.lr_half_life else self.zo.lr


@dataclass
class TrainResult:
    theta: np.ndarray
    steps_done: int
    losses: list[tuple[int, float]]  # (step, mean of L₊ and L₋)
    evals: list[tuple[int, EvalResult]]
    skipped: int
    seconds: float
    resumed_from: int

    def change(self) -> PairedChange | None:
        """Predictions of the last evaluation against the first of this run (θ₀, or the state it resumed from)."""
        return paired_change(self.evals[0][1], self.evals[-1][1]) if len(self.evals) >= 2 else None


def fingerprint(cfg: TrainConfig, data: TokenizedCorpus, batch_size: int) -> str:
    """What must be equal for a resumed run to continue the same trajectory (the step budget may grow)."""
    doc = {
        "zo": cfg.zo.to_dict(),
        "lr_half_life": cfg.lr_half_life,
        "data_seed": cfg.data_seed,
        "batch": batch_size,
        "n": len(data),
    }
    h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
    h.update(data.fingerprint_ids())
    return h.hexdigest()


def train(
    backend: GraphBackend,
    train_data: TokenizedCorpus,
    cfg: TrainConfig,
    *,
    eval_data: TokenizedCorpus | None = None,
    state_dir: str | Path | None = None,
    progress: bool = True,
    on_eval: Callable[[int, EvalResult], None] | None = None,
) -> TrainResult:
    layout = backend.manifest.layout
    fp = fingerprint(cfg, train_data, backend.batch_size)
    state = load_state(state_dir, layout) if state_dir else None
    if state is not None:
        if state.artifact != backend.artifact_id():
            raise StateError(f"{state_dir}: state was computed with another artifact; use a new --state folder")
        if state.fingerprint != fp:
            raise StateError(f"{state_dir}: state was computed with other settings or data; use a new --state folder")
        log.info("resuming from step %d (%s)", state.step, state_dir)
    else:
        state = DeviceState(theta=backend.initial_theta(), artifact=backend.artifact_id(), fingerprint=fp)
    resumed_from = state.step
    engine = ZOEngine(state.theta, layout, backend.run, cfg.zo)
    # a graph with length buckets gets batches of similar lengths (each then runs in the smallest bucket holding it)
    schedule = BatchSchedule(train_data, backend.batch_size, cfg.data_seed, by_length=len(backend.lengths) > 1)
    losses: list[tuple[int, float]] = []
    evals: list[tuple[int, EvalResult]] = []
    skipped = 0

    def do_eval(step: int) -> None:
        if eval_data is None:
            return
        result = evaluate(backend.run, engine.theta, eval_data, backend.batch_size, progress)
        evals.append((step, result))
        log.info("step %d: eval accuracy %.4f loss %.4f", step, result.accuracy, result.loss)
        if on_eval:
            on_eval(step, result)

    if state.step < cfg.steps or resumed_from == 0:
        do_eval(state.step)
    t0 = time.perf_counter()
    with tqdm(total=cfg.steps, initial=state.step, desc="ZO train", unit="step", disable=not progress) as bar:
        for t in range(state.step, cfg.steps):
            try:
                report = engine.step(schedule.batch(t), t)
                engine.update(report, cfg.lr_at(t))
                losses.append((t, engine.last_loss))
                # the mean of the last steps: one ZO step's loss swings by ±50 % with its batch and reads as divergence
                recent = [loss for _, loss in losses[-RUNNING_MEAN_STEPS:]]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            except NonFiniteLossError as exc:
                skipped += 1
                log.warning("step %d dropped: %s", t, exc)
            state.step = t + 1
            bar.update(1)
            if state_dir and cfg.save_every and state.step % cfg.save_every == 0:
                save_state(state_dir, state, layout)
            if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.steps:
                do_eval(state.step)
    seconds = time.perf_counter() - t0
    if state_dir:
        save_state(state_dir, state, layout)
    if cfg.steps > resumed_from or not evals:
        do_eval(state.step)
    return TrainResult(state.theta, state.step, losses, evals, skipped, seconds, resumed_from)
