"""``zgr``: zeroth-order optimisation with gradient rectification (ours; DESIGN.md §5).

Each device step measures two directions (docs/PERTURBATIONS.md §4): one inside the cloud's guidance subspace, whose
scalars give an unbiased estimate ā of the private gradient in the subspace's m coordinates, and one in its
complement. In the subspace the server mixes each direction k on its own, d_k = λ_k c_k + (1 − λ_k) ā_k, with λ_k*
estimated from the devices' spread, the cloud's minibatch variance and their measured disagreement
(``cooperllm.rectify``) — or a fixed λ for every k. The complement gets the devices' ZO estimate alone. Both steps
are normalised by running estimates of their scale, so η and η_zo need no re-tuning per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction
from cooperllm.rectify import RectifierState, mixing_weights, scalar_multipliers, subspace_samples, subspace_steps
from cooperllm.strategies.base import Aggregate, RoundInputs, Strategy
from cooperllm.zgr import BlockUpdate, apply_update, direction_of

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig


class Rectified(Strategy):
    """θ ← θ − η·V_b d_b/√ms_b − η_zo·mean (p/σ)·u_⊥, with d_k = λ_k c_k + (1 − λ_k) ā_k per block and direction."""

    name = "zgr"
    guided = True
    directions = (Direction.SUBSPACE, Direction.COMPLEMENT)

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        if not inputs.guidance:
            raise ValueError("a zgr round needs the rectifier's guidance for the round")
        samples = subspace_samples(layout, inputs.reports, self.directions, inputs.guidance)
        fixed = None if cfg.lam == "auto" else float(cfg.lam)
        stats, d = {}, {}
        for b, g in sorted(inputs.guidance.items()):
            st = mixing_weights(samples.get(b), g, inputs.state.bias.get(b), cfg.lam_max, fixed)
            stats[b] = st
            d[b] = st.lam * st.cloud + (1.0 - st.lam) * st.device_mean
        w, step_ms = subspace_steps(d, inputs.state.step_ms, cfg.eta)
        complement = [r for r in inputs.reports if direction_of(r, self.directions) is Direction.COMPLEMENT]
        q, scalar_ms = scalar_multipliers(layout, complement, inputs.state.scalar_ms, cfg.eta_zo)
        update = {b: BlockUpdate(q=q.get(b, 0.0), w=w.get(b)) for b in sorted(set(q) | set(w))}
        out = theta.copy()
        apply_update(out, layout, inputs.reports, self.directions, inputs.guidance, update)
        state = RectifierState({b: st.track for b, st in stats.items()}, step_ms, scalar_ms)
        return Aggregate(out, mean_lambda(stats), len(inputs.reports), update, block_stats(stats), state)


def mean_lambda(stats: dict) -> float:
    """The mean of λ_k over every guided block and direction (the round's one-number summary)."""
    return float(np.mean(np.concatenate([st.lam for st in stats.values()]))) if stats else 1.0


def block_stats(stats: dict) -> dict:
    """The per-block rectifier numbers as published in the round summary and the metrics ({block: {...}})."""
    return {str(b): st.to_json() for b, st in stats.items()}
