"""``cloud``: the cloud's backprop on public data alone, devices idle — the baseline that shows what the devices add.

Each round the rectifier computes the guidance at θ_r as for ``zgr`` (same public minibatches, same basis and
coefficients), and the server applies the cloud term alone: ``zgr``'s subspace step with λ = 1
and no reports, with the same η and the same normalisation. The two differ only by what the devices measured. Rounds
are replayable from the published guidance and update, and no device is asked to do anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.rectify import RectifierState, direction_stats, subspace_steps
from cooperllm.strategies.base import Aggregate, DeviceWork, RoundInputs, Strategy, Upload
from cooperllm.strategies.zgr import mean_lambda, published
from cooperllm.zgr import BlockUpdate, apply_update

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig


class CloudOnly(Strategy):
    name = "cloud"
    guided = True
    device_work = DeviceWork.IDLE
    upload = Upload.NONE
    directions = ()

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        if not inputs.guidance:
            raise ValueError("a cloud round needs the rectifier's guidance for the round")
        stats = {b: direction_stats(None, g, None) for b, g in sorted(inputs.guidance.items())}  # λ = 1
        c = {b: st.cloud for b, st in stats.items()}
        w, step_ms = subspace_steps(c, c, inputs.state.step_ms, cfg.eta)
        update = {b: BlockUpdate(w=wb) for b, wb in w.items()}
        out = theta.copy()
        apply_update(out, layout, (), self.directions, inputs.guidance, update)
        return Aggregate(out, mean_lambda(stats), 0, update, published(stats), RectifierState(step_ms=step_ms))
