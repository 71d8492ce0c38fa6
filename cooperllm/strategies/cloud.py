"""``cloud``: the cloud's backprop on public data alone, devices idle — the baseline that shows what the devices add.

Each round the rectifier computes the guidance at θ_r as for ``zgr`` (same public minibatches, same basis and
coefficients), and the server applies the cloud term alone: θ ← θ − η·V c, i.e. ``zgr``'s update with λ = 1 and no
reports. The same η as the cloud side of ``zgr``, so the two differ only by what the devices measured. Rounds are
replayable from the published guidance, and no device is asked to do anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.strategies.base import Aggregate, DeviceWork, RoundInputs, Strategy, Upload
from cooperllm.zgr import apply_round

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig

CLOUD_ONLY_LAMBDA = 1.0  # the whole step is the cloud's: published as the round's λ so the replay is zgr's


class CloudOnly(Strategy):
    name = "cloud"
    guided = True
    device_work = DeviceWork.IDLE
    upload = Upload.NONE

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        if not inputs.guidance:
            raise ValueError("a cloud round needs the rectifier's guidance for the round")
        out = theta.copy()
        apply_round(out, layout, (), inputs.guidance, cfg.alpha, CLOUD_ONLY_LAMBDA, cfg.eta)
        return Aggregate(out, CLOUD_ONLY_LAMBDA, 0)
