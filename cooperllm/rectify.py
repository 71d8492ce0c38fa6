"""The rectifier's arithmetic: how much of the cloud's gradient to trust, from the devices' subspace measurements,
and scale-free steps.

What the devices measure. A SUBSPACE measurement along u_V = s·Vξ gives a_k = ξ_k·p/s with E[a] = Vᵀg, the private
gradient in the guidance subspace's coordinates (docs/PERTURBATIONS.md §4). Per block and direction the round's mean
ā_k, its variance s_k²/N, the cloud's c_k and its minibatch variance τ_k² are published (:class:`DirectionStats`).

Two rules set λ (RunConfig.rectifier). 'direction' (the default, the rule protocol 2 was studied with): per direction
λ_k = (s_k²/N)/(s_k²/N + b_k² + τ_k²), one round's MSE-optimal weight, from the running per-direction bias b_k²
below, and d_k = λ_k c_k + (1 − λ_k) ā_k normalised by d's own running scale (:func:`direction_lambda`). 'axis' tests
the cloud where a test has power, as follows; it turns a shifted cloud down, and on in-domain validation it trails
'direction' (docs/RESULTS.md), so it is an option, not the default.

Where the cloud can be tested: along its own direction. One scalar p answers for every direction of every block at
once, so each a_k carries the noise of all the others (s_k² ≈ ‖Vᵀg‖² over the whole adapter, ~100 directions): with
the few measurements of a round, a per-direction bias test sees noise (protocol-2 study: s_k²/N ≈ b_k² in both
settings, mean λ_k 0.89 in-domain and 0.91 with the shifted cloud). What the cloud claims is one direction,
ĉ = c/‖c‖ over every guided block: "the loss falls along ĉ at rate κ", where κ = max(0, (‖c‖² − Σ τ_k²)/‖c‖) is
‖c‖ net of the cloud's own minibatch noise (ĉ is chosen by c, so that noise lies along it: :func:`axis_test`). The
devices' projection a_∥ = ā·ĉ tests that claim with the noise of one coordinate pooled over all of them, and a shifted
cloud fails it in the first rounds (in the protocol-2 study's published numbers the devices' a_∥ sits near κ
in-domain, and mostly below zero with the shifted cloud against κ ≈ 5–8, from round 0). So 'axis' weighs the cloud
by one λ per round, measured there:

    λ = s_∥² / (s_∥² + T·b_∥² + τ_∥²),  clipped to [0, λ_max],

with s_∥² the variance of a_∥ from the per-sample projections, τ_∥² = Σ ĉ_k² τ_k², and T = HORIZON: a per-round
λ* (T = 1) keeps a biased cloud, because its bias repeats every round while both sides' noise averages out over the
rounds a model moves through; weighing the error over the running averages' memory counts it T times. The step is

    d = λ·c + (1 − λ)·(ω_∥·a_∥ĉ + ω·ā_⊥),      ā_⊥ = ā − a_∥ĉ:

the cloud's gradient, or the devices' estimate — their slope along ĉ and, off ĉ where the cloud says nothing, their
ā_⊥ — each kept only where it is significant, and then shrunk by its positive-part James–Stein weight:
ω_∥ = max(0, 1 − s_∥²/a_∥²) if a_∥² > t²·s_∥² (t the two-sided 5 % quantile of Student's t with N − 1 degrees of
freedom, N the fewest measurements of a tested block), else 0; ω = max(0, 1 − E‖noise_⊥‖²/‖ā_⊥‖²) if ‖ā_⊥‖² exceeds
its expected noise by 1 + 2·√(2/M_⊥) (M_⊥ the coordinates off ĉ: under no signal the ratio is 1 with sd ≈ √(2/M_⊥),
the noise of all M_⊥ coordinates coming from the same N scalars), else 0. The devices' few measurements a round (five
in the study) usually are not significant: then a refuted cloud leaves the subspace step at zero, and the complement's
ZO step is where the devices' data moves the model. (Unshrunk, the devices' noisy slope drove the study's model into
one class within ten rounds in both settings: runs/exp/discarded/*-axis-noshrink. Shrunk without the test — the
positive-part weight alone — it kept 10–50 % of pure noise in about half of the shifted cloud's rounds, and that
noise, scaled to the cloud's step, random-walked θ in the subspace: the S2 run stayed at chance, loss 0.69 → 1.33.)
A fixed λ (RunConfig.lam) mixes plainly: d = λc + (1 − λ)ā.

How the bias is measured. One round's δ = a_∥ − κ is mostly noise, so b_∥² comes from the signed differences over
rounds: a weighted running mean μ = Σ wᵢδᵢ/Σ wᵢ (weights βⁱ, newest 1) whose own variance Σ wᵢ²(s_∥² + τ_∥²)ᵢ/(Σ wᵢ)²
is known from each round's measured noise; b² = max(0, μ² − BIAS_Z²·that variance): a bias counts where it is
significant. A cloud that is right on average leaves μ near 0 however noisy the rounds; a cloud whose data is shifted
keeps δ on one side, round after round. The same running test per direction k (signs taken relative to c_k, since a
basis column's sign is arbitrary) is still kept and published as b_k², a diagnostic of where the disagreement lies.

Why scale-free. Each part's step is normalised by a running estimate of its scale (an exponential average of the
mean square of the subspace step's reference in each block; of the ZO scalars p for the isotropic or complement
part), so one η means "this much movement per round" on any task or model. Under 'axis' the reference is the cloud's
c, not d:
when the test refutes the cloud and d shrinks, the step shrinks with it (normalising by d's own scale would blow a
turned-down step back up to full size along the same, refuted, direction). Every such estimate is carried from
round to round in :class:`RectifierState`, which the cloud stores with the round; the *published* update
(``cooperllm.zgr.BlockUpdate``) holds the final numbers, so a device's replay never needs this state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import STREAM_XI, Direction, rademacher, subspace_scale
from cooperllm.significance import pretest_weight, student_t975
from cooperllm.zgr import BlockGuidance, Report, blocks_of, direction_of, reports_per_block

BETA = 0.9  # weight of the past in every running average (bias, step scales): ~10 rounds of memory
# the λ trend budget 'follow' reads weighs the last ~3 tests: one round's λ swings (0.05–0.99 within a few rounds of
# an in-domain cloud's run), while a shifted cloud's stays below 0.2 throughout (docs/RESULTS.md)
LAM_TREND_BETA = 0.7
# A bias counts where the devices' evidence against the cloud is beyond BIAS_Z standard errors of its running mean:
# b² = max(0, μ² − BIAS_Z²·Var μ). 1 makes the estimate unbiased before clipping.
BIAS_Z = 1.0
# The horizon over which λ weighs the cloud's error against the devices': a bias repeats every round while noise
# averages out, so over T rounds of steps the cloud's error is T²b² + Tτ² against the devices' Ts², and
# λ* = s²/(s² + T·b² + τ²). T is the running averages' own memory, 1/(1 − β) = 10 rounds.
HORIZON = 1.0 / (1.0 - BETA)


@dataclass
class BiasTrack:
    """Running sums for a bias test of m numbers: Σw, Σw·δ and Σw²·Var(δ), each decayed by β (w²: by β²) a round."""

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

    @classmethod
    def from_json(cls, t: Mapping) -> BiasTrack:
        return cls(float(t["weight"]), [float(x) for x in t["signed"]], [float(x) for x in t["noise"]])


@dataclass
class RectifierState:
    """What the rectifier carries between rounds (JSON-able; stored by the cloud beside each closed round)."""

    bias: dict[int, BiasTrack] = field(default_factory=dict)  # per block and direction (the published b_k²)
    step_ms: dict[int, float] = field(default_factory=dict)  # running mean square of the cloud's c, per block
    scalar_ms: float | None = None  # running mean square of the ZO scalars p of the applied complement measurements
    axis: BiasTrack | None = None  # the test along the cloud's direction (one number): what sets λ
    lam: float | None = None  # the λ the round set (the rule's): what the next round's forward budget follows
    iso_ms: float | None = None  # the same for ISO measurements (budget 'follow'): they include the subspace's part
    tests: int = 0  # rounds that measured the subspace (tested the cloud) so far
    lam_trend: float | None = None  # a running mean of those rounds' λ (LAM_TREND_BETA): what budget 'follow' follows

    def to_json(self) -> dict:
        return {
            "bias": {str(b): vars(t) for b, t in self.bias.items()},
            "step_ms": {str(b): v for b, v in self.step_ms.items()},
            "scalar_ms": self.scalar_ms,
            "iso_ms": self.iso_ms,
            "tests": self.tests,
            "lam_trend": self.lam_trend,
            "axis": None if self.axis is None else vars(self.axis),
            "lam": self.lam,
        }

    @classmethod
    def from_json(cls, d: Mapping | None) -> RectifierState:
        if not d:
            return cls()
        return cls(
            bias={int(b): BiasTrack.from_json(t) for b, t in d.get("bias", {}).items()},
            step_ms={int(b): float(v) for b, v in d.get("step_ms", {}).items()},
            scalar_ms=None if d.get("scalar_ms") is None else float(d["scalar_ms"]),
            iso_ms=None if d.get("iso_ms") is None else float(d["iso_ms"]),
            tests=int(d.get("tests", 0)),
            lam_trend=None if d.get("lam_trend") is None else float(d["lam_trend"]),
            axis=None if d.get("axis") is None else BiasTrack.from_json(d["axis"]),
            lam=None if d.get("lam") is None else float(d["lam"]),
        )


@dataclass(frozen=True)
class DirectionStats:
    """One block's rectifier numbers for a round, each of length m (published in the round summary and metrics)."""

    n: int  # device measurements behind ā (N)
    device_mean: np.ndarray  # ā_k
    device_var: np.ndarray  # s_k²: the per-measurement variance (the mean's is s_k²/N)
    cloud: np.ndarray  # c_k
    cloud_var: np.ndarray  # τ_k²
    bias_sq: np.ndarray  # b_k²: the running per-direction bias test (a diagnostic; λ comes from the axis)
    lam: np.ndarray  # the weight of c_k in the step: the round's λ for every k (1 where the devices measured nothing)
    track: BiasTrack  # the running sums, carried into the next round

    def to_json(self) -> dict:
        return {
            "n": self.n,
            **{
                k: [float(x) for x in getattr(self, k)]
                for k in ("device_mean", "device_var", "cloud", "cloud_var", "bias_sq", "lam")
            },
        }


@dataclass(frozen=True)
class AxisStats:
    """The round's test of the cloud along its own direction ĉ = c/‖c‖ (over the blocks the devices measured ≥ 2
    times), and the weights it sets: λ for the cloud, ω for the devices' part off ĉ."""

    blocks: int  # blocks in the test
    cloud_norm: float  # ‖c‖
    cloud_slope: float  # max(0, (‖c‖² − Σ τ_k²)/‖c‖): the cloud's slope along ĉ, net of its own noise
    device_proj: float  # a_∥ = ā·ĉ: the devices' measured slope along ĉ
    device_se2: float  # s_∥²: the variance of a_∥
    cloud_var: float  # τ_∥² = Σ ĉ_k² τ_k²
    bias_sq: float  # b_∥² from the running test
    lam: float  # λ: the weight of the cloud
    keep_along: float  # ω_∥ = max(0, 1 − s_∥²/a_∥²): the weight of the devices' a_∥
    perp_sq: float  # ‖ā_⊥‖²
    perp_noise: float  # its expected noise, Σ s_k²/N − s_∥²
    keep: float  # ω: the weight of ā_⊥
    track: BiasTrack

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "track"}


def _ema(previous: float | None, value: float, beta: float = BETA) -> float:
    return value if previous is None else beta * previous + (1.0 - beta) * value


def lam_trend(previous: float | None, lam: float) -> float:
    """The running mean of the tested rounds' λ (LAM_TREND_BETA)."""
    return _ema(previous, lam, LAM_TREND_BETA)


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


def direction_stats(samples: np.ndarray | None, g: BlockGuidance, track: BiasTrack | None) -> DirectionStats:
    """One block's published numbers from its subspace samples (N × m), the cloud's c and τ² and the running
    per-direction bias track (carried over unchanged with fewer than 2 samples). ``lam`` is left at 1: the round's λ
    is set once the axis test has seen every block (:func:`rectify`)."""
    m = g.coeffs.shape[0]
    c = g.coeffs.astype(np.float64)
    tau2 = np.zeros(m) if g.coeff_var is None else g.coeff_var.astype(np.float64)
    track = track or BiasTrack()
    n = 0 if samples is None else samples.shape[0]
    ones = np.ones(m)
    if n < 2:
        mean = np.zeros(m) if samples is None or n == 0 else samples.mean(axis=0)
        bias_sq = track.bias_sq() if len(track.signed) == m else np.zeros(m)
        return DirectionStats(n, mean, np.zeros(m), c, tau2, bias_sq, ones, track)
    mean = samples.mean(axis=0)
    var = samples.var(axis=0, ddof=1)
    sign = np.where(c < 0, -1.0, 1.0)  # relative to the cloud's own direction: a column's sign is arbitrary
    track = track.updated(sign * (mean - c), var / n + tau2)
    return DirectionStats(n, mean, var, c, tau2, track.bias_sq(), ones, track)


def axis_test(
    stats: Mapping[int, DirectionStats],
    samples: Mapping[int, np.ndarray],
    track: BiasTrack | None,
    lam_max: float,
) -> AxisStats | None:
    """The cloud tested along ĉ over the blocks with ≥ 2 samples; None when there are none (or c = 0). s_∥² sums
    each block's variance of its per-sample projections a_i·ĉ_b over N_b (blocks measured by different reports are
    independent; within a block the projection keeps the directions' covariance).

    The cloud's slope along ĉ is not ‖c‖: ĉ is chosen by c itself, so c's own minibatch noise ε lies along it, and
    E[ĉ·c] overstates E[ĉ·g] by about E[c·ε]/‖c‖ = Σ τ_k²/‖c‖ — in the study's rounds Σ τ_k² is as large as ‖c‖²
    (runs/exp/seq-cls-S1-zgr-s0: 3.5–15 against 3–16), so an undebiased test calls an in-domain cloud biased."""
    tested = [b for b, st in sorted(stats.items()) if st.n >= 2]
    norm = math.sqrt(sum(float(stats[b].cloud @ stats[b].cloud) for b in tested))
    if not tested or not (norm > 0.0 and math.isfinite(norm)):
        return None
    proj = se2 = tau2 = total_se2 = total_tau2 = 0.0
    for b in tested:
        st, c_hat = stats[b], stats[b].cloud / norm
        proj += float(st.device_mean @ c_hat)
        se2 += float((samples[b] @ c_hat).var(ddof=1)) / st.n
        tau2 += float(st.cloud_var @ c_hat**2)
        total_se2 += float(st.device_var.sum()) / st.n
        total_tau2 += float(st.cloud_var.sum())
    slope = max(0.0, (norm * norm - total_tau2) / norm)
    track = (track or BiasTrack()).updated(np.array([proj - slope]), np.array([se2 + tau2]))
    bias_sq = float(track.bias_sq()[0])
    denom = se2 + HORIZON * bias_sq + tau2
    lam = min(max(se2 / denom, 0.0), lam_max) if denom > 0.0 and math.isfinite(denom) else lam_max
    fewest = min(stats[b].n for b in tested)
    keep_along = pretest_weight(proj * proj, se2, student_t975(fewest - 1) ** 2)
    perp_sq = sum(float(np.sum((stats[b].device_mean - proj * stats[b].cloud / norm) ** 2)) for b in tested)
    perp_noise = max(total_se2 - se2, 0.0)
    perp_coords = sum(stats[b].cloud.shape[0] for b in tested) - 1
    return AxisStats(
        len(tested),
        norm,
        slope,
        proj,
        se2,
        tau2,
        bias_sq,
        lam,
        keep_along,
        perp_sq,
        perp_noise,
        pretest_weight(perp_sq, perp_noise, 1.0 + 2.0 * math.sqrt(2.0 / max(perp_coords, 1))),
        track,
    )


def direction_lambda(st: DirectionStats, lam_max: float) -> np.ndarray:
    """The per-direction rule (RunConfig.rectifier 'direction'): λ_k = (s_k²/N)/(s_k²/N + b_k² + τ_k²), clipped to
    [0, λ_max], one round's MSE-optimal weight per direction. λ_k = 1 without samples, λ_max with one."""
    if st.n < 2:
        return np.full(st.cloud.shape[0], 1.0 if st.n == 0 else lam_max)
    se2 = st.device_var / st.n
    denom = se2 + st.bias_sq + st.cloud_var
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(denom > 0, se2 / denom, lam_max)
    return np.clip(np.nan_to_num(lam, nan=lam_max), 0.0, lam_max)


def rectify(
    samples: Mapping[int, np.ndarray],
    guidance: Mapping[int, BlockGuidance],
    state: RectifierState,
    lam_max: float,
    fixed: float | None = None,
    by_direction: bool = False,
) -> tuple[dict[int, DirectionStats], dict[int, np.ndarray], AxisStats | None]:
    """The round's subspace step d per guided block, with the published numbers: per block and direction, and the
    axis test (measured and published whichever rule sets λ). λ comes from the axis test, or per direction with
    ``by_direction``; ``fixed``, when the run fixes it, for every measured block: then d = λc + (1 − λ)ā. With the
    axis test a block the devices measured fewer than twice takes the cloud's c."""
    stats = {b: direction_stats(samples.get(b), g, state.bias.get(b)) for b, g in sorted(guidance.items())}
    axis = axis_test(stats, samples, state.axis, lam_max)
    d: dict[int, np.ndarray] = {}
    for b, st in stats.items():
        if fixed is not None and st.n >= 1:
            lam, mix = fixed, fixed * st.cloud + (1.0 - fixed) * st.device_mean
        elif by_direction:
            lam = direction_lambda(st, lam_max)
            mix = lam * st.cloud + (1.0 - lam) * st.device_mean
        elif axis is None or st.n < 2:
            lam, mix = 1.0, st.cloud
        else:
            c_hat = st.cloud / axis.cloud_norm
            along = axis.device_proj * c_hat
            devices = axis.keep_along * along + axis.keep * (st.device_mean - along)
            lam, mix = axis.lam, axis.lam * st.cloud + (1.0 - axis.lam) * devices
        stats[b] = replace(st, lam=np.broadcast_to(lam, st.cloud.shape).astype(np.float64))
        d[b] = mix
    return stats, d, axis


def subspace_steps(
    d: Mapping[int, np.ndarray],
    cloud: Mapping[int, np.ndarray],
    previous_ms: Mapping[int, float],
    eta: float,
    capped: bool = False,
) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Per block, the published subspace step w = −η·d/√ms (float32) and the new running mean square ms of the
    cloud's c. The scale is the cloud's, not d's: a d that the rectifier turned down (a refuted cloud, λ small) stays
    small instead of being scaled back up to η, while a d equal to c moves each block by about η·√m per round.

    ``capped`` (the axis rule) divides by √max(ms, mean d²) instead: no block moves further than a full cloud step.
    Without it a block where the cloud's gradient is small amplifies the devices' part of d by the ratio of the two
    scales — in the axis rule's first S2 run one round whose ā_⊥ passed its test moved θ by 14.4 (other rounds
    0.03–0.15), and the run never recovered (docs/RESULTS.md)."""
    steps, ms = {}, dict(previous_ms)
    for b, db in sorted(d.items()):
        floor = float(np.mean(db.astype(np.float64) ** 2)) if capped else 0.0
        steps[b], ms[b] = normalised(db, previous_ms.get(b), eta, reference=cloud[b], floor=floor)
    return steps, ms


def normalised(
    step: np.ndarray,
    previous_ms: float | None,
    eta: float,
    reference: np.ndarray | None = None,
    floor: float = 0.0,
) -> tuple[np.ndarray, float]:
    """(−η·d/√max(ms, floor) as float32, the new running mean square ms of ``reference``, d itself by default): a step
    whose size does not depend on the scale of the gradients (``floor`` only bounds this step; ms carries on)."""
    ref = step if reference is None else reference
    ms = _ema(previous_ms, float(np.mean(ref**2)))
    if not (ms > 0.0 and math.isfinite(ms)):
        return np.zeros(step.shape[0], np.float32), (previous_ms or 0.0)
    return (-eta * step / math.sqrt(max(ms, floor))).astype(np.float32), ms


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
