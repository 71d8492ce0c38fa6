"""``zgr``: zeroth-order optimisation with gradient rectification (ours; DESIGN.md §5).

Each device step measures two directions (docs/PERTURBATIONS.md §4): one inside the cloud's guidance subspace, whose
scalars give an unbiased estimate ā of the private gradient in the subspace's m coordinates, and one in its
complement. In the subspace the server mixes the cloud's gradient c with the devices' estimate ā by λ, measured each
round from the devices' spread, the cloud's minibatch variance and their running disagreement — per direction
(RunConfig.rectifier 'direction'), or once along the cloud's own direction ('axis') — or fixed
(``cooperllm.rectify``). The complement gets the devices' ZO estimate alone. Both steps are normalised by running
estimates of their scale, so η and η_zo need no re-tuning per task.
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
    rectify,
    scalar_multipliers,
    subspace_samples,
    subspace_steps,
)
from cooperllm.strategies.base import Aggregate, RoundInputs, RoundPlan, Strategy
from cooperllm.zgr import BlockGuidance, BlockUpdate, apply_update, direction_of

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig

# RunConfig.budget 'follow': below this λ the cloud is turned down, and every other round (odd rounds) measures the
# complement with both of a step's forward pairs; the even rounds keep the subspace measurement that tests the cloud.
# The threshold sits between the axis test's mean λ with an in-domain cloud (0.54) and with a shifted one (0.03) in the
# study's first runs (docs/RESULTS.md).
FOLLOW_BELOW = 0.25


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
        gives wholly to the complement (:func:`budget_moves`): the same number of measurements either way."""
        plan = super().configure_round(cfg, blocks, round_, state)
        if budget_moves(cfg.budget, round_, state):
            return replace(plan, directions=(Direction.COMPLEMENT, Direction.COMPLEMENT))
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
        else:  # the round's budget went to the complement: nothing measured the subspace
            stats, d = carried_step(inputs.guidance, inputs.state)
            lam = inputs.state.lam
        # the per-direction rule scales by d itself (as protocol 2 was studied); the axis rule by the cloud's c, so a
        # refuted cloud's small d stays small (cooperllm.rectify)
        scale = d if by_direction else {b: st.cloud for b, st in stats.items()}
        w, step_ms = subspace_steps(d, scale, inputs.state.step_ms, cfg.eta, capped=axis_rule)
        complement = [r for r in inputs.reports if direction_of(r, directions) is Direction.COMPLEMENT]
        q, scalar_ms = scalar_multipliers(layout, complement, inputs.state.scalar_ms, cfg.eta_zo)
        update = {b: BlockUpdate(q=q.get(b, 0.0), w=w.get(b)) for b in sorted(set(q) | set(w))}
        out = theta.copy()
        apply_update(out, layout, inputs.reports, directions, inputs.guidance, update)
        state = RectifierState(
            {b: st.track for b, st in stats.items()},
            step_ms,
            scalar_ms,
            inputs.state.axis if axis is None else axis.track,
            lam,
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


def budget_moves(budget: str, round_: int, state: RectifierState | None) -> bool:
    """RunConfig.budget 'follow': whether round ``round_`` spends the subspace measurement on the complement — an
    odd round after a round whose λ fell below FOLLOW_BELOW. Decided from the carried state alone, so a restarted cloud
    and a replaying device agree (the round's directions are published with it)."""
    return (
        budget == "follow"
        and round_ % 2 == 1
        and state is not None
        and state.lam is not None
        and state.lam < FOLLOW_BELOW
    )


def carried_step(
    guidance: Mapping[int, BlockGuidance], state: RectifierState
) -> tuple[dict[int, DirectionStats], dict[int, np.ndarray]]:
    """A round without subspace measurements (its budget moved to the complement): nothing tests the cloud, so the
    subspace step keeps the last measured weight, d = λ·c, and the per-direction tracks carry over unchanged."""
    lam = 1.0 if state.lam is None else state.lam
    stats, d = {}, {}
    for b, g in sorted(guidance.items()):
        st = direction_stats(None, g, state.bias.get(b))
        stats[b] = replace(st, lam=np.full(st.cloud.shape, lam))
        d[b] = lam * st.cloud
    return stats, d
