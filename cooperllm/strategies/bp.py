"""``bp``: FedAvg of backprop LoRA updates — the accuracy ceiling and the memory reference, not a phone algorithm.

Devices take local AdamW steps and upload Δθ = θ_local − θ_r; the server applies θ ← θ + η·Σ nᵢΔᵢ / Σ nᵢ. A round is
not described by seeds and scalars, so devices download the adapter instead of replaying.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.strategies.base import Aggregate, DeviceWork, RoundInputs, Strategy, Upload

if TYPE_CHECKING:
    from cooperllm.protocol import RunConfig


class FedAvgBackprop(Strategy):
    name = "bp"
    device_work = DeviceWork.BACKPROP
    upload = Upload.DELTA
    replayable = False
    default_eta = 1.0  # Δθ already carries the local AdamW steps: FedAvg applies it as is
    default_local_lr = 1e-3

    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        out = theta.copy()
        out += np.float32(cfg.eta) * weighted_mean(inputs.deltas).astype(np.float32)
        return Aggregate(out, None, len(inputs.deltas))  # mixes nothing: no λ (like zo)


def weighted_mean(deltas: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """Σ nᵢΔᵢ / Σ nᵢ in float64, accumulated in the given (device) order."""
    total = sum(n for n, _ in deltas)
    if not deltas or total <= 0:
        raise ValueError("FedAvg needs at least one delta with a positive example count")
    acc = np.zeros_like(deltas[0][1], dtype=np.float64)
    for n, delta in deltas:
        acc += (n / total) * delta.astype(np.float64)
    return acc
