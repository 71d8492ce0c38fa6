"""``zo``: federated zeroth-order optimisation without guidance (FedKSeed/MeZO-style), the ZO baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.rectify import RectifierState, scalar_multipliers
from cooperllm.strategies.base import Aggregate, RoundInputs, Strategy
from cooperllm.zgr import BlockUpdate, apply_update

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig


class ZerothOrder(Strategy):
    """θ ← θ − η_zo · mean over reports of (p/σ)·z(seed): plain Rademacher directions, no cloud term; σ a running RMS
    of the scalars, so the step is the same scale-free one as ``zgr``'s complement step."""

    name = "zo"

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        q, scalar_ms = scalar_multipliers(layout, inputs.reports, inputs.state.scalar_ms, cfg.eta_zo)
        update = {b: BlockUpdate(q=qb) for b, qb in q.items()}
        out = theta.copy()
        apply_update(out, layout, inputs.reports, self.directions, {}, update)
        return Aggregate(out, None, len(inputs.reports), update, state=RectifierState(scalar_ms=scalar_ms))
