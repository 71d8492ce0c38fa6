"""Small significance tests for the rectifier (cooperllm.rectify): a pretest estimator's weight, and Student's t
quantile it needs. Kept apart so the rectifier's module holds the rule, not the tables."""

from __future__ import annotations

import math


def pretest_weight(square: float, noise: float, threshold: float) -> float:
    """A pretest estimator's weight: 0 unless ``square`` exceeds ``threshold``·``noise`` (the estimate is significant),
    then the positive-part James–Stein weight max(0, 1 − noise/square), how much of it stands above its noise. Without
    the test, pure noise keeps a weight up to ~0.3 in half of the rounds (cooperllm.rectify)."""
    if not (square > threshold * noise and square > 0.0):
        return 0.0
    return min(max(1.0 - noise / square, 0.0), 1.0)


def student_t975(dof: int) -> float:
    """The 97.5 % quantile of Student's t (two-sided 5 %): from the table for 1–5 degrees of freedom, the
    Cornish–Fisher expansion around the normal quantile beyond (within 0.002 of the tables from 6 on); inf for none."""
    if dof < 1:
        return math.inf
    if dof <= 5:
        return (12.7062, 4.3027, 3.1824, 2.7764, 2.5706)[dof - 1]
    z, v = 1.959963984540054, float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )
