"""The strategy protocol: what a round asks of the devices and how their uploads become the next θ.

In the spirit of Flower's ``Strategy`` (configure_fit / aggregate_fit): one small class per federated algorithm, used
alike by the cloud's round engine, the device client and the simulation, so that adding an algorithm means adding a
class, not editing branches on the name of a strategy. A strategy holds no state: everything a round needs comes in as
arguments, which keeps aggregation deterministic and replayable (docs/PERTURBATIONS.md §4).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.zgr import BlockGuidance, Report, apply_round

if TYPE_CHECKING:  # the wire model imports the registry's names; the strategies need its type only
    from cooperllm.protocol import RunConfig


class DeviceWork(enum.StrEnum):
    """What a device computes in a round: forward-only ZO steps (the device runtime), or local backprop steps."""

    ZO = "zo"
    BACKPROP = "backprop"
    IDLE = "idle"  # the round needs no device (the cloud-only baseline)


class Upload(enum.StrEnum):
    """What a device sends back: ZO reports (seed, block, step, scalar) or a dense Δθ frame."""

    REPORTS = "reports"
    DELTA = "delta"
    NONE = "none"  # devices send nothing: every upload is refused as the wrong kind


@dataclass(frozen=True)
class RoundPlan:
    """The strategy's part of what devices are told for a round (``RoundInfo``)."""

    alpha: float  # weight of the isotropic part of a guided perturbation (1.0: plain Rademacher)
    guided: bool  # the cloud publishes guidance bases for this round
    device_work: DeviceWork
    uploads_per_device: int  # reports (or deltas) a device sends to count as complete; 0: the round needs no device


@dataclass(frozen=True)
class RoundInputs:
    """What the cloud collected in a round, in canonical order (reports by seed, block, step, device; deltas by
    device). ``cloud_var`` is the rectifier's minibatch variance of the guidance coefficients (guided runs)."""

    reports: Sequence[Report] = ()
    deltas: Sequence[tuple[int, np.ndarray]] = ()  # (n_examples, Δθ)
    guidance: Mapping[int, BlockGuidance] = field(default_factory=dict)
    cloud_var: float | None = None


@dataclass(frozen=True)
class Aggregate:
    """θ_{r+1}, the mixing weight λ that produced it (published for replay) and how many uploads were used."""

    theta: np.ndarray
    lam: float
    n_used: int
    terms: Mapping[str, float] = field(default_factory=dict)  # λ*'s estimated terms, for the log


class Strategy(ABC):
    """One federated algorithm. Subclasses set the class attributes and implement :meth:`aggregate`."""

    name: ClassVar[str]
    guided: ClassVar[bool] = False  # the cloud runs the rectifier (backprop on public data) and sends guidance
    device_work: ClassVar[DeviceWork] = DeviceWork.ZO
    upload: ClassVar[Upload] = Upload.REPORTS
    replayable: ClassVar[bool] = True  # a round can be rebuilt from seeds, scalars and published numbers
    default_eta: ClassVar[float] = 1e-3  # the server's step when a run does not name one
    default_local_lr: ClassVar[float] = 0.0  # a device's own step (0: ZO devices measure θ_r and do not move)

    def configure_round(self, cfg: RunConfig, blocks: Sequence[int]) -> RoundPlan:
        """What every device is asked to do this round."""
        per_device = {Upload.REPORTS: cfg.local_steps * len(blocks), Upload.DELTA: 1, Upload.NONE: 0}[self.upload]
        return RoundPlan(self.device_alpha(cfg), self.guided, self.device_work, per_device)

    def device_alpha(self, cfg: RunConfig) -> float:
        """α the devices perturb with (and the replay uses): unguided strategies draw plain Rademacher directions."""
        return cfg.alpha if self.guided else 1.0

    @abstractmethod
    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        """θ_{r+1} from θ_r and the round's inputs; must not modify ``theta`` and must be deterministic."""

    def replay(
        self,
        theta: np.ndarray,
        layout: ParamLayout,
        reports: Sequence[Report],
        guidance: Mapping[int, BlockGuidance],
        alpha: float,
        lam: float,
        eta: float,
    ) -> None:
        """Rebuild θ_{r+1} in place from a closed round's published record (what a device does instead of
        downloading the adapter). The same float32 sequence as :meth:`aggregate`, so the result is bit-identical."""
        if not self.replayable:
            raise ValueError(f"strategy {self.name!r} rounds cannot be replayed: download the adapter")
        apply_round(theta, layout, reports, guidance, alpha, lam, eta)
