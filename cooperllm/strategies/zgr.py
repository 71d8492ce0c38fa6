"""``zgr``: zeroth-order optimisation with gradient rectification (ours; DESIGN.md §5).

Devices perturb partly along the cloud's guidance subspace; the server mixes the devices' ZO estimate with the cloud's
public-data gradient V c by a weight λ — fixed by the run, or ``auto``: estimated each round from the spread of the
device scalars, the cloud's minibatch variance and their disagreement (``cooperllm.zgr.online_lambda``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.strategies.base import Aggregate, RoundInputs, Strategy
from cooperllm.zgr import apply_round, online_lambda

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig

log = logging.getLogger(__name__)


class Rectified(Strategy):
    """θ ← θ − η·[(1−λ)·ĝ_Z + λ·V c]."""

    name = "zgr"
    guided = True

    def mixing_weight(self, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> tuple[float, dict]:
        """λ for this round and, when estimated online, the terms it came from."""
        if cfg.lam != "auto":
            return float(cfg.lam), {}
        if inputs.cloud_var is None:
            raise ValueError("lam 'auto' needs the rectifier's cloud variance for the round")
        return online_lambda(layout, inputs.reports, inputs.guidance, cfg.alpha, inputs.cloud_var, cfg.lam_max)

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        lam, terms = self.mixing_weight(layout, cfg, inputs)
        out = theta.copy()
        apply_round(out, layout, inputs.reports, inputs.guidance, cfg.alpha, lam, cfg.eta)
        return Aggregate(out, lam, len(inputs.reports), terms)
