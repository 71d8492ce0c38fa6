"""Zeroth-order engine: MeZO's four verbs (perturb, forward, step, update) on one float32 θ, perturbed in place.

A step is two-point SPSA along a seeded portable direction u: θ += εu, L₊; θ −= 2εu, L₋; θ += εu (restore), and
p = (L₊ − L₋)/2ε. u is regenerated block by block from (seed, block) and the kind of direction the round asks for
(plain Rademacher, inside the cloud's guidance subspace, or in its complement: ``cooperllm.perturb.Direction``), so the
engine holds θ plus at most one block's u. The local update θ ← θ − η·p·u uses the same primitive as the server's
round update and every replay (``cooperllm.perturb.add_direction``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import MAX_SEED, Direction, add_direction, mix64
from cooperllm.tokenization import EncodedBatch
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance, Report

log = logging.getLogger(__name__)

SCHEDULES = ("all", "cycle")
RunFn = Callable[[EncodedBatch, np.ndarray], tuple[float, np.ndarray]]


class NonFiniteLossError(ArithmeticError):
    """A forward pass returned NaN/Inf: the step is dropped rather than reported."""


@dataclass(frozen=True)
class ZOConfig:
    """Local ZO hyper-parameters (in federated mode they come from the round config)."""

    lr: float = 1e-4
    eps: float = 1e-3
    schedule: str = "all"  # "all": one seed perturbs every block (report block −1); "cycle": block t mod B at step t
    seed: int = 0  # base seed; step seeds are derived from (seed, round, step)
    blocks: tuple[int, ...] | None = None  # with "cycle": the blocks to cycle through (None: every block)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"block schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a positive finite number, got {self.eps}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a non-negative finite number, got {self.lr}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2^63-1], got {self.seed}")
        if self.blocks is not None:
            if self.schedule != "cycle":
                raise ValueError("a block subset needs the 'cycle' schedule (one report names one block or all)")
            if not self.blocks or len(set(self.blocks)) != len(self.blocks) or min(self.blocks) < 0:
                raise ValueError(f"blocks must be distinct non-negative block indices, got {self.blocks}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = None if self.blocks is None else list(self.blocks)
        return d


def step_seed(base_seed: int, round_id: int, step: int) -> int:
    """A portable per-step seed: SplitMix-hash of (base seed, round, step), in [0, 2^63-1]."""
    return mix64(mix64(mix64(base_seed) ^ (round_id & ((1 << 64) - 1))) ^ step) & MAX_SEED


class ZOEngine:
    """Holds θ (float32, updated in place) and runs SPSA steps through ``run_fn`` (a backend's ``run``)."""

    def __init__(
        self,
        theta: np.ndarray,
        layout: ParamLayout,
        run_fn: RunFn,
        config: ZOConfig,
        guidance: Mapping[int, BlockGuidance] | None = None,
    ):
        if theta.dtype != np.float32 or theta.shape != (layout.total,):
            raise ValueError(f"θ must be float32 of shape ({layout.total},)")
        self.theta = theta
        self.layout = layout
        self.run_fn = run_fn
        self.config = config
        self.guidance: dict[int, BlockGuidance] = dict(guidance or {})
        for b, g in self.guidance.items():
            if not 0 <= b < len(layout.blocks) or g.basis.shape[0] != layout.blocks[b].size:
                raise ValueError(f"guidance for block {b} does not match the layout")
        if config.blocks is not None and max(config.blocks) >= len(layout.blocks):
            raise ValueError(f"blocks {config.blocks} are not all in the layout ({len(layout.blocks)} blocks)")

    # --- schedule -------------------------------------------------------------------------------------------------
    def report_block(self, step: int) -> int:
        """Block a step perturbs: −1 (all), or the next block of the cycle."""
        if self.config.schedule == "all":
            return ALL_BLOCKS
        cycle = self.config.blocks or range(len(self.layout.blocks))
        return cycle[step % len(cycle)]

    def blocks_of(self, report_block: int) -> range:
        return range(len(self.layout.blocks)) if report_block == ALL_BLOCKS else range(report_block, report_block + 1)

    # --- the four verbs ------------------------------------------------------------------------------------------
    def perturb(self, coef: float, seed: int, report_block: int, kind: Direction = Direction.ISO) -> None:
        """θ_b += coef·u(seed, b) for every block the step touches, one block's u alive at a time."""
        if kind is not Direction.ISO:  # check every block first: a refused step leaves θ untouched
            for b in self.blocks_of(report_block):
                if b not in self.guidance:
                    raise ValueError(f"a {kind.name.lower()} step on block {b} needs that block's guidance")
        for b in self.blocks_of(report_block):
            g = self.guidance.get(b)
            add_direction(self.theta[self.layout.blocks[b].slice], coef, seed, b, kind, None if g is None else g.basis)

    def forward(self, batch: EncodedBatch) -> float:
        loss, _ = self.run_fn(batch, self.theta)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"forward pass returned loss {loss}")
        return loss

    def step(
        self,
        batch: EncodedBatch,
        step: int,
        round_id: int = 0,
        *,
        seed: int | None = None,
        block: int | None = None,
        kind: Direction = Direction.ISO,
    ) -> Report:
        """Two-point SPSA at the current θ along a direction of ``kind``; θ is restored (up to float rounding) before
        returning, even on error.

        ``seed`` and ``block`` default to the config's derivation and schedule; the client passes the round's.
        """
        seed = step_seed(self.config.seed, round_id, step) if seed is None else seed
        block = self.report_block(step) if block is None else block
        if block != ALL_BLOCKS and not 0 <= block < len(self.layout.blocks):
            raise ValueError(f"block {block} is not in the layout ({len(self.layout.blocks)} blocks)")
        eps = self.config.eps
        self.perturb(eps, seed, block, kind)
        offset = eps  # how far θ currently is from where it started, along u
        try:
            loss_plus = self.forward(batch)
            self.perturb(-2.0 * eps, seed, block, kind)
            offset = -eps
            loss_minus = self.forward(batch)
        finally:
            self.perturb(-offset, seed, block, kind)
        scalar = (loss_plus - loss_minus) / (2.0 * eps)
        self.last_loss = 0.5 * (loss_plus + loss_minus)
        return Report(seed=seed, block=block, step=step, scalar=float(scalar), n_examples=int(batch.labels.shape[0]))

    def update(self, report: Report, lr: float | None = None, kind: Direction = Direction.ISO) -> None:
        """θ ← θ − lr·p·u(seed): MeZO's local update along the direction the report measured."""
        lr = self.config.lr if lr is None else lr
        self.perturb(-lr * report.scalar, report.seed, report.block, kind)
