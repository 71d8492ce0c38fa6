"""``zo``: federated zeroth-order optimisation without guidance (FedKSeed/MeZO-style), the ZO baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.strategies.base import Aggregate, RoundInputs, Strategy
from cooperllm.zgr import apply_round

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig


class ZerothOrder(Strategy):
    """θ ← θ − η · mean over reports of p·z(seed): plain Rademacher directions, no cloud term."""

    name = "zo"

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        out = theta.copy()
        apply_round(out, layout, inputs.reports, {}, 1.0, 0.0, cfg.eta)
        return Aggregate(out, 0.0, len(inputs.reports))
