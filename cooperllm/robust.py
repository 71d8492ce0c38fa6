"""Robust aggregation: what one round's uploads may weigh, whatever a malicious device sends (docs/SECURITY.md §3).

A round's inputs are bounded against the round's own statistics before any strategy sees them:

- ZO reports: each scalar is clipped to ±k·M, M the median |scalar| of the round's reports that measured the same
  block and the same kind of direction (their scales differ). The cloud publishes the clipped scalars in the round's
  sync, so a device that replays the round applies exactly what the cloud applied.
- bp deltas: each Δθ is scaled down to at most k times the median norm of the round's deltas, and each upload's
  FedAvg weight is already capped at the examples a device can have used (local_steps × batch_size, at the desk).

With f of a group's N reports malicious and f < N/2, M lies between two honest reports' magnitudes, so each malicious
report weighs at most k typical honest ones, and the running scale σ the ZO steps are normalised by cannot be inflated
by more than a factor √(1 + f·k²·M²/Σ p_honest²) in one round (unclipped, one 1e6 scalar froze learning for hundreds
of rounds). A median of one or two values is the attacker's own: bounds need at least three reports per group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cooperllm.perturb import Direction
from cooperllm.zgr import Report, direction_of

DEFAULT_CLIP_K = 10.0


def clip_reports(reports: Sequence[Report], directions: Sequence[Direction], k: float | None) -> list[Report]:
    """The reports with each scalar clipped to ±k × the median |scalar| of its (block, direction) group; the order
    is kept (it is the canonical aggregation order). ``k`` None: unchanged."""
    if k is None or not reports:
        return list(reports)
    groups: dict[tuple[int, Direction], list[float]] = defaultdict(list)
    for r in reports:
        groups[(r.block, direction_of(r, directions))].append(abs(r.scalar))
    bound = {key: k * float(np.median(values)) for key, values in groups.items()}
    out = []
    for r in reports:
        b = bound[(r.block, direction_of(r, directions))]
        out.append(replace(r, scalar=float(np.clip(r.scalar, -b, b))) if abs(r.scalar) > b else r)
    return out


def clip_deltas(deltas: Sequence[tuple[int, np.ndarray]], k: float | None) -> list[tuple[int, np.ndarray]]:
    """The (n_examples, Δθ) uploads with each Δθ scaled down to at most k × the round's median ‖Δθ‖ (in float32, so
    the store and the aggregate agree); ``k`` None: unchanged."""
    if k is None or not deltas:
        return list(deltas)
    norms = [float(np.linalg.norm(d.astype(np.float64))) for _, d in deltas]
    bound = k * float(np.median(norms))
    return [
        (n, (d * np.float32(bound / norm)).astype(np.float32) if norm > bound else d)
        for (n, d), norm in zip(deltas, norms, strict=True)
    ]
