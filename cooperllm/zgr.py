"""Round math shared by devices and the cloud: reports, which direction each measured, and the round update.

A round's update is published as numbers per block (:class:`BlockUpdate`) and applied as a fixed sequence of float32
operations (docs/PERTURBATIONS.md §5), so the server and every device that replays it from seeds, scalars and those
numbers reach the same θ bit for bit. How a strategy chooses the numbers (the rectifier's λ, the
normalised steps) lives in ``cooperllm.rectify``; here is only what every side must agree on.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction, add_direction, combine_columns

ALL_BLOCKS = -1


@dataclass(frozen=True)
class Report:
    """One two-point ZO measurement: p = (L(θ+εu) − L(θ−εu)) / 2ε along u(seed) on ``block`` (or all blocks).

    Which kind of direction u is follows from ``step`` and the round's directions (:func:`direction_of`): measurement
    ``step`` perturbs along ``directions[step mod D]`` on the device's batch ``step div D``."""

    seed: int
    block: int
    step: int
    scalar: float
    n_examples: int

    def __post_init__(self) -> None:
        check_report(self)


class ReportError(ValueError):
    """A report that breaks a rule; ``key`` names the rule (a key of ``cooperllm.protocol.ERRORS``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_report(
    report: Report,
    *,
    blocks: Collection[int] | None = None,
    local_steps: int | None = None,
    seeds: tuple[int, int] | None = None,
    max_abs_scalar: float | None = None,
) -> None:
    """The one report check, used wherever a report is made or received (device engine, outbox, wire models, DTC
    decoder, the cloud's upload desk): the scalar is finite and, where the caller knows the round, within
    ``max_abs_scalar``; the block is one the round trains; the step is in [0, local_steps); the seed is in the device's
    range [lo, hi). Raises :class:`ReportError` naming the first rule broken, in that order of cost."""
    if not math.isfinite(report.scalar):
        raise ReportError("scalar_out_of_range", f"report scalar must be finite, got {report.scalar}")
    if blocks is not None and report.block not in blocks:
        raise ReportError("unknown_block", f"report names block {report.block}, not one of this round's")
    if local_steps is not None and not 0 <= report.step < local_steps:
        raise ReportError("bad_step", f"report step {report.step} outside [0, {local_steps})")
    if seeds is not None and not seeds[0] <= report.seed < seeds[1]:
        raise ReportError("seed_out_of_range", f"report seed {report.seed} outside [{seeds[0]}, {seeds[1]})")
    if max_abs_scalar is not None and abs(report.scalar) > max_abs_scalar:
        raise ReportError("scalar_out_of_range", f"report scalar {report.scalar} beyond ±{max_abs_scalar}")


@dataclass(frozen=True)
class BlockGuidance:
    """Cloud guidance for one block: orthonormal basis V (n_b × m, float32), c = Vᵀ g_cloud (m,) and, where the
    cloud measured it, τ² (m,): the variance of each c_k over the cloud's public minibatches (the rectifier's input)."""

    basis: np.ndarray
    coeffs: np.ndarray
    coeff_var: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.basis.dtype != np.float32 or self.basis.ndim != 2:
            raise ValueError("guidance basis must be a 2-D float32 array")
        if self.coeffs.shape != (self.basis.shape[1],):
            raise ValueError(f"guidance coeffs {self.coeffs.shape} do not match basis {self.basis.shape}")
        if self.coeff_var is not None and self.coeff_var.shape != self.coeffs.shape:
            raise ValueError(f"guidance coeff_var {self.coeff_var.shape} does not match coeffs {self.coeffs.shape}")


@dataclass(frozen=True)
class BlockUpdate:
    """A round's published update of one block: θ_b += f32(q·p_r)·u_r for every applied report r that touches the
    block (ISO and COMPLEMENT measurements; SUBSPACE ones enter through w), then θ_b += Σ_k w_k·V_b[:, k]."""

    q: float = 0.0
    w: np.ndarray | None = None  # float32 (m,), in the block's guidance coordinates; None: no subspace step

    def __post_init__(self) -> None:
        if not math.isfinite(self.q):
            raise ValueError(f"update multiplier q must be finite, got {self.q}")
        if self.w is not None and (self.w.dtype != np.float32 or self.w.ndim != 1 or not np.isfinite(self.w).all()):
            raise ValueError("update step w must be a finite 1-D float32 array")


def direction_of(report: Report, directions: Sequence[Direction]) -> Direction:
    """The kind of direction a report measured: ``directions[step mod D]`` (the round's plan names the D kinds)."""
    return directions[report.step % len(directions)]


def reports_per_block(layout: ParamLayout, reports: Sequence[Report]) -> list[int]:
    counts = [0] * len(layout.blocks)
    for r in reports:
        for b in blocks_of(layout, r):
            counts[b] += 1
    return counts


def blocks_of(layout: ParamLayout, report: Report) -> range:
    """The blocks a report perturbed: all of them for ``ALL_BLOCKS``, else its one block."""
    if report.block == ALL_BLOCKS:
        return range(len(layout.blocks))
    if not 0 <= report.block < len(layout.blocks):
        raise ValueError(f"report names block {report.block}, layout has {len(layout.blocks)}")
    return range(report.block, report.block + 1)


def apply_update(
    theta: np.ndarray,
    layout: ParamLayout,
    reports: Sequence[Report],
    directions: Sequence[Direction],
    guidance: Mapping[int, BlockGuidance],
    update: Mapping[int, BlockUpdate],
) -> None:
    """θ ← θ_r + the round's update, in place (docs/PERTURBATIONS.md §5).

    Order is part of the contract: reports in the given order (blocks increasing within one), then the subspace steps
    block by block. Every coefficient is computed in binary64 and rounded once to binary32.
    """
    for r in reports:
        kind = direction_of(r, directions)
        if kind is Direction.SUBSPACE:
            continue
        for b in blocks_of(layout, r):
            u = update.get(b)
            if u is None or u.q == 0.0:
                continue
            g = guidance.get(b)
            add_direction(
                theta[layout.blocks[b].slice], u.q * r.scalar, r.seed, b, kind, None if g is None else g.basis
            )
    for b in sorted(update):
        w = update[b].w
        if w is None:
            continue
        g = guidance.get(b)
        if g is None or g.basis.shape[1] != w.shape[0]:
            raise ValueError(f"the update's subspace step for block {b} has no matching guidance basis")
        block = theta[layout.blocks[b].slice]
        block += combine_columns(g.basis, w)
