"""The registry of federated strategies: the only place that maps a strategy's name to its behaviour.

``get_strategy(name)`` is how the cloud, the device client and the simulation learn what a round of a run means;
no code outside this package branches on a strategy's name.
"""

from __future__ import annotations

from cooperllm.strategies.base import Aggregate, DeviceWork, RoundInputs, RoundPlan, Strategy, Upload
from cooperllm.strategies.bp import FedAvgBackprop
from cooperllm.strategies.cloud import CloudOnly
from cooperllm.strategies.zgr import Rectified
from cooperllm.strategies.zo import ZerothOrder

_REGISTRY: dict[str, Strategy] = {s.name: s for s in (Rectified(), ZerothOrder(), FedAvgBackprop(), CloudOnly())}
STRATEGY_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGY_NAMES)}") from None


__all__ = [
    "STRATEGY_NAMES",
    "Aggregate",
    "DeviceWork",
    "RoundInputs",
    "RoundPlan",
    "Strategy",
    "Upload",
    "get_strategy",
]
