"""ZGR round math shared by devices and the cloud: reports, the rectified update and its exact replay.

The update is applied as a fixed sequence of float32 operations (docs/PERTURBATIONS.md §4), so the server and every
device that replays it from seeds and scalars reach the same θ bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import add_perturbation, combine_columns

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
        if not math.isfinite(self.scalar):
            raise ValueError(f"report scalar must be finite, got {self.scalar}")


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
