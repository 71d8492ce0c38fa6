"""The rectifier's arithmetic: per-direction λ_k from the devices' subspace measurements, and scale-free steps.

Why per direction. The devices measure the private gradient inside the cloud's guidance subspace without bias:
a SUBSPACE measurement along u_V = s·Vξ gives a_k = ξ_k·p/s with E[a] = Vᵀg (docs/PERTURBATIONS.md §4). In those m
coordinates the devices' mean ā_k, its variance s_k²/N, the cloud's c_k and its minibatch variance τ_k² are all cheap
and accurate, so the cloud's bias can be measured where it acts. Each direction then takes the MSE-optimal mix
d_k = λ_k c_k + (1 − λ_k) ā_k with λ_k = (s_k²/N) / (s_k²/N + b_k² + τ_k²): where the public data agrees with the
devices, its low-noise gradient drives; where it disagrees, λ_k falls and the devices' data does.

How the bias is measured. One round's difference δ_k = ā_k − c_k is mostly noise (the round's few devices, their few
measurements), so b_k² comes from the *signed* differences over rounds: a weighted running mean μ_k = Σ wᵢδᵢ/Σ wᵢ
(weights βⁱ, newest 1), whose own variance Σ wᵢ²(s²/N + τ²)ᵢ/(Σ wᵢ)² is known from each round's measured noise;
b_k² = max(0, μ_k² − BIAS_Z²·that variance): a bias is counted where it is significant. A cloud that is right on
average leaves μ_k near 0 however noisy the rounds; a cloud whose data is shifted keeps δ_k on one side, round after
round. Signs are taken relative to the cloud's own
gradient (δ_k·sign(c_k)), since a basis column's sign is arbitrary from one round's basis to the next.

Why scale-free. Each part's step is normalised by a running estimate of its own scale (an exponential average of the
mean square of d in each block; of the ZO scalars p for the isotropic or complement part), so one η means "this much
movement per round" on any task or model. Every such estimate is carried from round to round in
:class:`RectifierState`, which the cloud stores with the round; the *published* update (``cooperllm.zgr.BlockUpdate``)
holds the final numbers, so a device's replay never needs this state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import STREAM_XI, Direction, rademacher, subspace_scale
from cooperllm.zgr import BlockGuidance, Report, blocks_of, direction_of, reports_per_block

BETA = 0.9  # weight of the past in every running average (bias, step scales): ~10 rounds of memory
# The bias counts where the devices' evidence against the cloud is beyond BIAS_Z standard errors of its running mean:
# b² = max(0, μ² − BIAS_Z²·Var μ). 1 makes the estimate unbiased before clipping; the clipping then turns pure noise
# into a bias about a third of the time, which costs an in-domain cloud some weight in the first rounds (mean λ 0.62
# in round 1, 0.89 in round 8 of the tuning run runs/exp/tune/zgr@1e-2). 2 was tried after the tuning and not
# re-tuned, so the study runs 1 (docs/RESULTS.md).
BIAS_Z = 1.0


@dataclass
class BiasTrack:
    """One block's running sums for the bias: Σw, Σw·δ_k and Σw²·Var(δ_k), each decayed by β (w²: by β²) a round."""

    weight: float = 0.0
    signed: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)

    def updated(self, delta: np.ndarray, delta_var: np.ndarray) -> BiasTrack:
        m = delta.shape[0]
        fresh = len(self.signed) != m
        signed = np.zeros(m) if fresh else np.asarray(self.signed)
        noise = np.zeros(m) if fresh else np.asarray(self.noise)
        weight = 0.0 if fresh else self.weight
        return BiasTrack(BETA * weight + 1.0, (BETA * signed + delta).tolist(), (BETA**2 * noise + delta_var).tolist())

    def bias_sq(self) -> np.ndarray:
        """max(0, μ² − BIAS_Z²·Var μ): the squared bias where the evidence for one is significant (zeros before any
        round)."""
        if self.weight <= 0.0:
            return np.zeros(len(self.signed))
        mu = np.asarray(self.signed) / self.weight
        return np.maximum(mu**2 - BIAS_Z**2 * np.asarray(self.noise) / self.weight**2, 0.0)


@dataclass
class RectifierState:
    """What the rectifier carries between rounds (JSON-able; stored by the cloud beside each closed round)."""

    bias: dict[int, BiasTrack] = field(default_factory=dict)  # per block
    step_ms: dict[int, float] = field(default_factory=dict)  # running mean square of the subspace step d, per block
    scalar_ms: float | None = None  # running mean square of the ZO scalars p of the applied measurements

    def to_json(self) -> dict:
        return {
            "bias": {str(b): vars(t) for b, t in self.bias.items()},
            "step_ms": {str(b): v for b, v in self.step_ms.items()},
            "scalar_ms": self.scalar_ms,
        }

    @classmethod
    def from_json(cls, d: Mapping | None) -> RectifierState:
        if not d:
            return cls()
        return cls(
            bias={
                int(b): BiasTrack(float(t["weight"]), [float(x) for x in t["signed"]], [float(x) for x in t["noise"]])
                for b, t in d.get("bias", {}).items()
            },
            step_ms={int(b): float(v) for b, v in d.get("step_ms", {}).items()},
            scalar_ms=None if d.get("scalar_ms") is None else float(d["scalar_ms"]),
        )


@dataclass(frozen=True)
class DirectionStats:
    """One block's rectifier numbers for a round, each of length m (published in the round summary and metrics)."""

    n: int  # device measurements behind ā (N)
    device_mean: np.ndarray  # ā_k
    device_var: np.ndarray  # s_k²: the per-measurement variance (the mean's is s_k²/N)
    cloud: np.ndarray  # c_k
    cloud_var: np.ndarray  # τ_k²
    bias_sq: np.ndarray  # b_k²
    lam: np.ndarray  # λ_k
    track: BiasTrack  # the running sums, carried into the next round

    def to_json(self) -> dict:
        return {
            "n": self.n,
            **{
                k: [float(x) for x in getattr(self, k)]
                for k in ("device_mean", "device_var", "cloud", "cloud_var", "bias_sq", "lam")
            },
        }


def _ema(previous: float | None, value: float) -> float:
    return value if previous is None else BETA * previous + (1.0 - BETA) * value


def subspace_samples(
    layout: ParamLayout,
    reports: Sequence[Report],
    directions: Sequence[Direction],
    guidance: Mapping[int, BlockGuidance],
) -> dict[int, np.ndarray]:
    """Per guided block, the N × m matrix of a = ξ·p/s over the round's SUBSPACE measurements that touched it."""
    rows: dict[int, list[np.ndarray]] = {}
    for r in reports:
        if direction_of(r, directions) is not Direction.SUBSPACE:
            continue
        for b in blocks_of(layout, r):
            g = guidance.get(b)
            if g is None:
                continue
            n, m = g.basis.shape
            xi = rademacher(r.seed, b, m, STREAM_XI).astype(np.float64)
            rows.setdefault(b, []).append(xi * (r.scalar / float(subspace_scale(n, m))))
    return {b: np.stack(v) for b, v in rows.items()}


def mixing_weights(
    samples: np.ndarray | None,
    g: BlockGuidance,
    track: BiasTrack | None,
    lam_max: float,
    fixed: float | None = None,
) -> DirectionStats:
    """λ_k for one block from its subspace samples (N × m), the cloud's c and τ², and the running bias: the
    MSE-optimal λ_k* clipped to [0, λ_max], or ``fixed`` for every k when the run fixes λ (the statistics are still
    measured and published).

    Without samples the devices said nothing about this block: λ_k = 1 and the bias track carries over. With one
    sample their variance cannot be measured: λ_k = λ_max (or the fixed λ), the track carries over.
    """
    m = g.coeffs.shape[0]
    c = g.coeffs.astype(np.float64)
    tau2 = np.zeros(m) if g.coeff_var is None else g.coeff_var.astype(np.float64)
    track = track or BiasTrack()
    n = 0 if samples is None else samples.shape[0]
    if n < 2:
        mean = np.zeros(m) if samples is None or n == 0 else samples.mean(axis=0)
        lam = np.full(m, 1.0 if n == 0 else (lam_max if fixed is None else fixed))
        bias_sq = track.bias_sq() if len(track.signed) == m else np.zeros(m)
        return DirectionStats(n, mean, np.zeros(m), c, tau2, bias_sq, lam, track)
    mean = samples.mean(axis=0)
    var = samples.var(axis=0, ddof=1)
    se2 = var / n
    sign = np.where(c < 0, -1.0, 1.0)  # relative to the cloud's own direction: a column's sign is arbitrary
    track = track.updated(sign * (mean - c), se2 + tau2)
    bias_sq = track.bias_sq()
    if fixed is not None:
        return DirectionStats(n, mean, var, c, tau2, bias_sq, np.full(m, fixed), track)
    denom = se2 + bias_sq + tau2
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(denom > 0, se2 / denom, lam_max)
    lam = np.clip(np.nan_to_num(lam, nan=lam_max), 0.0, lam_max)
    return DirectionStats(n, mean, var, c, tau2, bias_sq, lam, track)


def subspace_steps(
    d: Mapping[int, np.ndarray], previous_ms: Mapping[int, float], eta: float
) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Per block, the published subspace step w = −η·d/√ms (float32) and the new running mean square ms of d."""
    steps, ms = {}, dict(previous_ms)
    for b, db in sorted(d.items()):
        steps[b], ms[b] = normalised(db, previous_ms.get(b), eta)
    return steps, ms


def normalised(step: np.ndarray, previous_ms: float | None, eta: float) -> tuple[np.ndarray, float]:
    """(−η·d/√ms as float32, the new running mean square ms of d): a step of the same size whatever the scale of d."""
    ms = _ema(previous_ms, float(np.mean(step**2)))
    if not (ms > 0.0 and math.isfinite(ms)):
        return np.zeros(step.shape[0], np.float32), (previous_ms or 0.0)
    return (-eta * step / math.sqrt(ms)).astype(np.float32), ms


def scalar_multipliers(
    layout: ParamLayout,
    applied: Sequence[Report],
    previous_ms: float | None,
    eta: float,
) -> tuple[dict[int, float], float | None]:
    """The ZO part's per-block multiplier q_b = −η / (N_b·σ), σ² a running mean square of the scalars p: the update
    θ_b −= η·mean_r (p_r/σ)·u_r moves each coordinate by about η/√N_b per round whatever the loss's scale."""
    if not applied:
        return {}, previous_ms
    ms = _ema(previous_ms, float(np.mean([r.scalar**2 for r in applied])))
    if not (ms > 0.0 and math.isfinite(ms)):
        return {}, previous_ms
    sigma = math.sqrt(ms)
    counts = reports_per_block(layout, applied)
    return {b: -eta / (n * sigma) for b, n in enumerate(counts) if n}, ms
