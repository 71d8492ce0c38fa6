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
from cooperllm.perturb import Direction
from cooperllm.rectify import RectifierState
from cooperllm.zgr import BlockGuidance, BlockUpdate, Report, apply_update

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

    directions: tuple[Direction, ...]  # what each local step measures, in order (one report per direction)
    guided: bool  # the cloud publishes guidance bases for this round
    device_work: DeviceWork
    uploads_per_device: int  # reports (or deltas) a device sends to count as complete; 0: the round needs no device


@dataclass(frozen=True)
class RoundInputs:
    """What the cloud collected in a round, in canonical order (reports by seed, block, step, device; deltas by
    device; guidance with each direction's τ_k²). ``state`` is what the rectifier carried out of the previous round;
    ``directions`` the round's plan's (None: the strategy's own)."""

    reports: Sequence[Report] = ()
    deltas: Sequence[tuple[int, np.ndarray]] = ()  # (n_examples, Δθ)
    guidance: Mapping[int, BlockGuidance] = field(default_factory=dict)
    state: RectifierState = field(default_factory=RectifierState)
    directions: tuple[Direction, ...] | None = None


@dataclass(frozen=True)
class Aggregate:
    """θ_{r+1}; the published update that rebuilds it from θ_r (``apply_update``); the mean weight λ of the cloud
    (None where the strategy mixes nothing); how many uploads were used; the rectifier's numbers (for the round
    summary and the metrics) and the state it carries into the next round."""

    theta: np.ndarray
    lam: float | None
    n_used: int
    update: Mapping[int, BlockUpdate] = field(default_factory=dict)
    stats: Mapping[str, object] = field(default_factory=dict)
    state: RectifierState = field(default_factory=RectifierState)


class Strategy(ABC):
    """One federated algorithm. Subclasses set the class attributes and implement :meth:`aggregate`."""

    name: ClassVar[str]
    guided: ClassVar[bool] = False  # the cloud runs the rectifier (backprop on public data) and sends guidance
    device_work: ClassVar[DeviceWork] = DeviceWork.ZO
    upload: ClassVar[Upload] = Upload.REPORTS
    replayable: ClassVar[bool] = True  # a round can be rebuilt from seeds, scalars and published numbers
    directions: ClassVar[tuple[Direction, ...]] = (Direction.ISO,)  # what a device's step measures
    default_eta: ClassVar[float] = 1e-2  # the server's step η when a run does not name one (normalised: see rectify)
    default_local_lr: ClassVar[float] = 0.0  # a device's own step (0: ZO devices measure θ_r and do not move)

    def configure_round(
        self, cfg: RunConfig, blocks: Sequence[int], round_: int = 0, state: RectifierState | None = None
    ) -> RoundPlan:
        """What every device is asked to do in round ``round_``, given what the rectifier carried out of the round
        before (``state``; None for the first round)."""
        per_report = cfg.local_steps * len(blocks) * len(self.directions)
        per_device = {Upload.REPORTS: per_report, Upload.DELTA: 1, Upload.NONE: 0}[self.upload]
        return RoundPlan(self.directions, self.guided, self.device_work, per_device)

    @abstractmethod
    def aggregate(self, theta: np.ndarray, layout: ParamLayout, cfg: RunConfig, inputs: RoundInputs) -> Aggregate:
        """θ_{r+1} from θ_r and the round's inputs; must not modify ``theta`` and must be deterministic."""

    def replay(
        self,
        theta: np.ndarray,
        layout: ParamLayout,
        reports: Sequence[Report],
        guidance: Mapping[int, BlockGuidance],
        update: Mapping[int, BlockUpdate],
        directions: Sequence[Direction] | None = None,
    ) -> None:
        """Rebuild θ_{r+1} in place from a closed round's published record (what a device does instead of
        downloading the adapter): its reports, guidance, update and directions (None: the strategy's own). The same
        float32 sequence as :meth:`aggregate`, so the result is bit-identical."""
        if not self.replayable:
            raise ValueError(f"strategy {self.name!r} rounds cannot be replayed: download the adapter")
        apply_update(theta, layout, reports, directions or self.directions, guidance, update)
