"""Robust aggregation: what one round's uploads may weigh, whatever a malicious device sends (docs/SECURITY.md §3).

A round's inputs are bounded against the round's own statistics before any strategy sees them:

- ZO reports: a report whose |scalar| exceeds k·M, M the median |scalar| of the round's reports that measured the same
  block and the same kind of direction (their scales differ), is left out of the round. Clipping it to k·M instead
  would still let it weigh k honest reports and inflate the running scale σ that every later ZO step is divided by.
  The price is an honest report now and then: with five reports a group, normal scalars put one beyond 10·M in 1.2 %
  of groups, and the measured ones (heavier-tailed) in 2 of 20 (docs/SECURITY.md §3). The cloud publishes the
  reports it kept in the round's sync, so a device that replays the round applies exactly what the cloud applied.
- bp deltas: each Δθ is scaled down to at most k times the median norm of the round's deltas, and each upload's
  FedAvg weight is already capped at the examples a device can have used (local_steps × batch_size, at the desk).

With f of a group's N reports malicious and f < N/2, M lies between two honest reports' magnitudes, so each malicious
report that is kept weighs at most k typical honest ones (an attacker that knows the rule stays just inside it), and
the running scale σ cannot be inflated by more than a factor √(1 + f·k²·M²/Σ p_honest²) in one round. A median of one
or two values is the attacker's own: bounds need at least three reports per group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cooperllm.perturb import Direction
from cooperllm.zgr import Report, direction_of

DEFAULT_CLIP_K = 10.0


def bound_reports(reports: Sequence[Report], directions: Sequence[Direction], k: float | None) -> list[Report]:
    """The reports whose |scalar| is at most k × the median |scalar| of their (block, direction) group, in their order
    (the canonical aggregation order); ``k`` None: all of them."""
    if k is None or not reports:
        return list(reports)
    groups: dict[tuple[int, Direction], list[float]] = defaultdict(list)
    for r in reports:
        groups[(r.block, direction_of(r, directions))].append(abs(r.scalar))
    bound = {key: k * float(np.median(values)) for key, values in groups.items()}
    return [r for r in reports if abs(r.scalar) <= bound[(r.block, direction_of(r, directions))]]


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
