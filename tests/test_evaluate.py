"""Evaluation figures: the paired before/after comparison behind a reported gain."""

import numpy as np
import pytest

from cooperllm.evaluate import EvalResult, paired_change


def _result(correct: list[bool]) -> EvalResult:
    c = np.array(correct)
    return EvalResult(float(c.mean()), 0.5, len(c), c)


def test_paired_change_counts_flips_and_gives_the_exact_mcnemar_p_value():
    before = [False] * 28 + [True] * 12 + [True] * 800 + [False] * 32
    after = [True] * 28 + [False] * 12 + [True] * 800 + [False] * 32
    change = paired_change(_result(before), _result(after))
    assert (change.gained, change.lost) == (28, 12)
    assert change.p_value == pytest.approx(0.016589, abs=1e-6)  # 2·P(Binomial(40, ½) ≤ 12)
    same = paired_change(_result(before), _result(before))
    assert (same.gained, same.lost, same.p_value) == (0, 0, 1.0)


def test_paired_change_needs_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        paired_change(_result([True, False]), _result([True, False, True]))
    with pytest.raises(ValueError, match="same examples"):
        paired_change(EvalResult(0.5, 0.5, 2), _result([True, False]))
