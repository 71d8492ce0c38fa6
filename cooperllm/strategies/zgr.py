"""``zgr``: zeroth-order optimisation with gradient rectification (ours; DESIGN.md §5).

Each device step measures two directions (docs/PERTURBATIONS.md §4): one inside the cloud's guidance subspace, whose
scalars give an unbiased estimate ā of the private gradient in the subspace's m coordinates, and one in its
complement. In the subspace the server mixes the cloud's gradient c with the devices' estimate ā by λ, measured each
round from the devices' spread, the cloud's minibatch variance and their running disagreement — per direction
(RunConfig.rectifier 'direction'), or once along the cloud's own direction ('axis') — or fixed
(``cooperllm.rectify``). The complement gets the devices' ZO estimate alone. Both steps are normalised by running
estimates of their scale, so η and η_zo need no re-tuning per task. With RunConfig.budget 'follow', once the cloud is
turned down most rounds spend both measurements on ISO directions instead (zo's estimator) and take no step along the
cloud, until a test round finds it right again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction
from cooperllm.rectify import (
    AxisStats,
    DirectionStats,
    RectifierState,
    direction_stats,
    lam_trend,
    rectify,
    scalar_multipliers,
    subspace_samples,
    subspace_steps,
)
from cooperllm.strategies.base import Aggregate, RoundInputs, RoundPlan, Strategy
from cooperllm.zgr import BlockGuidance, BlockUpdate, Report, apply_update, direction_of

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig

# RunConfig.budget 'follow': once FOLLOW_AFTER rounds have tested the cloud and the running mean of their λ is below
# FOLLOW_BELOW, the cloud is turned down, and the rounds between tests (every TEST_EVERY-th round keeps the subspace
# measurement that tests the cloud) measure ISO directions with both of a step's forward pairs: the zo estimator,
# which covers the cloud's subspace as well. The threshold sits between the axis test's mean λ with an in-domain cloud
# (0.54) and with a shifted one (0.03) in the study's first runs; the first rounds' λ is low with either cloud (0.02
# in rounds 0–1 of both), since the test has no evidence yet (docs/RESULTS.md).
FOLLOW_BELOW = 0.25
FOLLOW_AFTER = 3
# Three rounds in four go where the devices' data moves the model while the cloud stays turned down; the fourth tests
# it again, so a cloud that comes right is seen within four rounds. (Testing every other round with the budget on the
# complement left S2 at chance: u_⊥ excludes V, and V, built from the cloud's gradients, holds the directions that
# decide the class; docs/RESULTS.md, session 2026-12-07.)
TEST_EVERY = 4


MOVED = (Direction.ISO, Direction.ISO)  # a moved round's directions: a step's two forward pairs, both on ISO


class Rectified(Strategy):
    """θ ← θ − η·V_b d_b/√ms_b − η_zo·mean (p/σ)·u_⊥, with d and the scale ms_b from the run's rectifier rule
    (cooperllm.rectify)."""

    name = "zgr"
    guided = True
    directions = (Direction.SUBSPACE, Direction.COMPLEMENT)

    def configure_round(
        self, cfg: RunConfig, blocks: Sequence[int], round_: int = 0, state: RectifierState | None = None
    ) -> RoundPlan:
        """Every step measures the subspace and its complement, except in the rounds RunConfig.budget 'follow'
        gives wholly to ISO directions (:func:`budget_moves`): the same number of measurements either way."""
        plan = super().configure_round(cfg, blocks, round_, state)
        if budget_moves(cfg.budget, round_, state):
            return replace(plan, directions=MOVED)
        return plan

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        if not inputs.guidance:
            raise ValueError("a zgr round needs the rectifier's guidance for the round")
        directions = inputs.directions or self.directions
        fixed = None if cfg.lam == "auto" else float(cfg.lam)
        by_direction = cfg.rectifier == "direction"
        axis_rule = not by_direction and fixed is None  # λ from the test along ĉ, the step capped (cooperllm.rectify)
        axis = None
        if Direction.SUBSPACE in directions:
            samples = subspace_samples(layout, inputs.reports, directions, inputs.guidance)
            stats, d, axis = rectify(samples, inputs.guidance, inputs.state, cfg.lam_max, fixed, by_direction)
            lam = axis.lam if axis is not None and axis_rule else mean_lambda(stats)
            if cloud_held_back(cfg.budget, inputs.state):  # a test round: measured, but no step along the cloud
                d = {b: db - stats[b].lam * stats[b].cloud for b, db in d.items()}
            # the per-direction rule scales by d itself (as protocol 2 was studied); the axis rule by the cloud's c,
            # so a refuted cloud's small d stays small (cooperllm.rectify)
            scale = d if by_direction else {b: st.cloud for b, st in stats.items()}
            w, step_ms = subspace_steps(d, scale, inputs.state.step_ms, cfg.eta, capped=axis_rule)
        else:  # a moved round (budget 'follow'): the cloud was turned down and nothing tests it, so no step along it
            stats, lam = carried_stats(inputs.guidance, inputs.state), inputs.state.lam
            w, step_ms = {}, inputs.state.step_ms
        q, scalar_ms, iso_ms = zo_multipliers(layout, inputs.reports, directions, inputs.state, cfg.eta_zo)
        update = {b: BlockUpdate(q=q.get(b, 0.0), w=w.get(b)) for b in sorted(set(q) | set(w))}
        out = theta.copy()
        apply_update(out, layout, inputs.reports, directions, inputs.guidance, update)
        tested = Direction.SUBSPACE in directions
        state = RectifierState(
            {b: st.track for b, st in stats.items()},
            step_ms,
            scalar_ms,
            inputs.state.axis if axis is None else axis.track,
            lam,
            iso_ms,
            inputs.state.tests + tested,
            lam_trend(inputs.state.lam_trend, lam) if tested and lam is not None else inputs.state.lam_trend,
        )
        return Aggregate(out, mean_lambda(stats), len(inputs.reports), update, published(stats, axis), state)


def mean_lambda(stats: dict) -> float:
    """The mean weight of the cloud's c_k over every guided block and direction (the round's one-number summary)."""
    return float(np.mean(np.concatenate([st.lam for st in stats.values()]))) if stats else 1.0


def published(stats: dict, axis: AxisStats | None = None) -> dict:
    """The rectifier's numbers as published in the round summary and the metrics: per block and direction
    ({"blocks": {block: {...}}}) and the round's test along the cloud's direction ("axis"; None where there was none).
    """
    return {
        "blocks": {str(b): st.to_json() for b, st in stats.items()},
        "axis": None if axis is None else axis.to_json(),
    }


def turned_down(budget: str, state: RectifierState | None) -> bool:
    """RunConfig.budget 'follow': whether the cloud is turned down — FOLLOW_AFTER rounds have tested it and the
    running mean of their λ is below FOLLOW_BELOW. While it is, no round steps along the cloud: a moved round does not
    measure it, and a test round keeps only the devices' own part of d. Even a small λ moves θ the same way round
    after round, and a drift that consistent outweighs the devices' ZO steps, whose directions are random: the S2 run
    whose test rounds still took λ·c (λ ≈ 0.03) ended at the one-class accuracy (docs/RESULTS.md)."""
    return (
        budget == "follow"
        and state is not None
        and state.tests >= FOLLOW_AFTER
        and state.lam_trend is not None
        and state.lam_trend < FOLLOW_BELOW
    )


def cloud_held_back(budget: str, state: RectifierState | None) -> bool:
    """RunConfig.budget 'follow': whether a round that tests the cloud keeps only the devices' part of d (d − λc) —
    while the cloud is turned down (:func:`turned_down`), and before FOLLOW_AFTER rounds have tested it at all: an
    untested cloud is not followed. The first rounds' λ says little (it is low with any cloud, FOLLOW_AFTER above),
    and what a shifted cloud moves in them stays: the S2 run that stepped along it in rounds 0–2 (‖w‖ up to 0.017, λ
    then turned it down for good) stayed at the one-class accuracy, its ZO steps too small to undo that drift
    (docs/RESULTS.md). An in-domain cloud loses FOLLOW_AFTER of the run's rounds."""
    return budget == "follow" and (state is None or state.tests < FOLLOW_AFTER or turned_down(budget, state))


def budget_moves(budget: str, round_: int, state: RectifierState | None) -> bool:
    """RunConfig.budget 'follow': whether round ``round_`` spends both measurements of a step on ISO directions — a
    round that is not a test round (every TEST_EVERY-th) while the cloud is turned down (:func:`turned_down`). Decided
    from the carried state alone, so a restarted cloud and a replaying device agree (the round's directions are
    published with it)."""
    return round_ % TEST_EVERY != 0 and turned_down(budget, state)


def zo_multipliers(
    layout: ParamLayout,
    reports: Sequence[Report],
    directions: Sequence[Direction],
    state: RectifierState,
    eta_zo: float,
) -> tuple[dict[int, float], float | None, float | None]:
    """The ZO part's q per block and the two running scales: a round measures COMPLEMENT or (moved) ISO directions,
    never both, and each kind keeps its own σ — an ISO scalar includes the subspace's share of the gradient, which
    the complement's excludes, so one σ for both would shrink the smaller kind's steps."""
    kinds = {direction_of(r, directions) for r in reports} - {Direction.SUBSPACE}
    if len(kinds) > 1:
        raise ValueError(f"a zgr round measures the complement or ISO directions, not both: {sorted(kinds)}")
    zo = [r for r in reports if direction_of(r, directions) is not Direction.SUBSPACE]
    if Direction.ISO in kinds:
        q, iso_ms = scalar_multipliers(layout, zo, state.iso_ms, eta_zo)
        return q, state.scalar_ms, iso_ms
    q, scalar_ms = scalar_multipliers(layout, zo, state.scalar_ms, eta_zo)
    return q, scalar_ms, state.iso_ms


def carried_stats(guidance: Mapping[int, BlockGuidance], state: RectifierState) -> dict[int, DirectionStats]:
    """A moved round's published numbers: nothing measured the subspace, so the per-direction tracks carry over
    unchanged and λ is the last measured one (the round's summary; no step is taken along the cloud)."""
    lam = 1.0 if state.lam is None else state.lam
    stats = {}
    for b, g in sorted(guidance.items()):
        st = direction_stats(None, g, state.bias.get(b))
        stats[b] = replace(st, lam=np.full(st.cloud.shape, lam))
    return stats
