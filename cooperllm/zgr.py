"""ZGR round math shared by devices and the cloud: reports, the rectified update and its exact replay.

The update is applied as a fixed sequence of float32 operations (docs/PERTURBATIONS.md §4), so the server and every
device that replays it from seeds and scalars reach the same θ bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import add_perturbation, combine_columns, perturbation

ALL_BLOCKS = -1


@dataclass(frozen=True)
class Report:
    """One two-point ZO measurement: p = (L(θ+εz) − L(θ−εz)) / 2ε along z(seed) on ``block`` (or all blocks)."""

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
    """Cloud guidance for one block: orthonormal basis V (n_b × m, float32) and c = Vᵀ g_cloud (m,)."""

    basis: np.ndarray
    coeffs: np.ndarray

    def __post_init__(self) -> None:
        if self.basis.dtype != np.float32 or self.basis.ndim != 2:
            raise ValueError("guidance basis must be a 2-D float32 array")
        if self.coeffs.shape != (self.basis.shape[1],):
            raise ValueError(f"guidance coeffs {self.coeffs.shape} do not match basis {self.basis.shape}")


def reports_per_block(layout: ParamLayout, reports: Sequence[Report]) -> list[int]:
    counts = [0] * len(layout.blocks)
    for r in reports:
        for b in _blocks_of(layout, r):
            counts[b] += 1
    return counts


def _blocks_of(layout: ParamLayout, report: Report) -> range:
    if report.block == ALL_BLOCKS:
        return range(len(layout.blocks))
    if not 0 <= report.block < len(layout.blocks):
        raise ValueError(f"report names block {report.block}, layout has {len(layout.blocks)}")
    return range(report.block, report.block + 1)


def apply_round(
    theta: np.ndarray,
    layout: ParamLayout,
    reports: Sequence[Report],
    guidance: Mapping[int, BlockGuidance],
    alpha: float,
    lam: float,
    eta: float,
) -> None:
    """θ ← θ − η·[(1−λ)·ĝ_Z + λ·V c], in place; ĝ_Z is the per-block mean of p·z over the reports that touched it.

    Order is part of the contract: reports in the given order, then the cloud term, block by block.
    """
    counts = reports_per_block(layout, reports)
    for r in reports:
        for b in _blocks_of(layout, r):
            g = guidance.get(b)
            coef = -(eta * (1.0 - lam) * r.scalar / counts[b])
            block = theta[layout.blocks[b].slice]
            add_perturbation(block, coef, r.seed, b, None if g is None else g.basis, alpha)
    if lam > 0.0:
        for b, g in sorted(guidance.items()):
            block = theta[layout.blocks[b].slice]
            block += np.float32(-(eta * lam)) * combine_columns(g.basis, g.coeffs)


def lambda_star(zo_var: float, cloud_var: float, bias_sq: float, lam_max: float = 1.0) -> float:
    """The MSE-optimal mixing weight λ* = dσ² / (dσ² + ‖b̄‖² + τ²), clipped to [0, λ_max] (DESIGN.md §5.5).

    ``zo_var`` is dσ² (total variance of the ZO mean), ``cloud_var`` τ² (variance of the cloud minibatch gradient),
    ``bias_sq`` ‖b̄‖² (squared bias of the cloud gradient w.r.t. the device objective).
    """
    denom = zo_var + bias_sq + cloud_var
    if not math.isfinite(denom) or denom <= 0.0:
        return 0.0
    return float(min(max(zo_var / denom, 0.0), lam_max))


def online_lambda(
    layout: ParamLayout,
    reports: Sequence[Report],
    guidance: Mapping[int, BlockGuidance],
    alpha: float,
    cloud_var: float,
    lam_max: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """Estimate λ* from one round: σ² from the spread of the device scalars, τ² given by the cloud, ‖b̄‖² from the
    disagreement ‖ĝ_Z − V c‖² minus the two noise terms (clipped at 0). Only blocks with guidance are used.

    Returns (λ, the estimated terms). With fewer than two reports on every guided block σ² cannot be measured
    and λ falls back to 0 (trust the devices).
    """

    counts = reports_per_block(layout, reports)
    zo_var = 0.0
    disagreement = 0.0
    used = 0
    for b, g in sorted(guidance.items()):
        touching = [r for r in reports if b in _blocks_of(layout, r)]
        if len(touching) < 2:
            continue
        n_b = layout.blocks[b].size
        scalars = np.array([r.scalar for r in touching], dtype=np.float64)
        zo_var += n_b * float(scalars.var(ddof=1)) / counts[b]
        g_z = np.zeros(n_b, dtype=np.float64)
        for r in touching:
            g_z += r.scalar * perturbation(r.seed, b, n_b, g.basis, alpha).astype(np.float64)
        g_z /= counts[b]
        g_c = g.basis.astype(np.float64) @ g.coeffs.astype(np.float64)
        disagreement += float(np.sum((g_z - g_c) ** 2))
        used += 1
    if used == 0:
        return 0.0, {"zo_var": 0.0, "cloud_var": cloud_var, "bias_sq": 0.0, "blocks": 0.0}
    bias_sq = max(0.0, disagreement - zo_var - cloud_var)
    lam = lambda_star(zo_var, cloud_var, bias_sq, lam_max)
    return lam, {"zo_var": zo_var, "cloud_var": cloud_var, "bias_sq": bias_sq, "blocks": float(used)}
