"""The rectifier's per-direction λ_k and its scale-free steps (cooperllm.rectify)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cooperllm.rectify import BiasTrack, RectifierState, mixing_weights, normalised, scalar_multipliers
from cooperllm.zgr import BlockGuidance, Report


def _guidance(c, tau2=0.0) -> BlockGuidance:
    c = np.asarray(c, dtype=np.float32)
    return BlockGuidance(np.eye(6, len(c), dtype=np.float32), c, coeff_var=np.full(len(c), tau2))


def _samples(mean, sd, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(mean) + sd * rng.standard_normal((n, len(mean)))


def test_lambda_trusts_the_cloud_where_it_agrees_and_the_devices_where_it_does_not():
    """Direction 0: the cloud agrees with the devices on average; direction 1: it points the other way."""
    truth = np.array([1.0, 1.0])
    g = _guidance([1.0, -1.0], tau2=1e-4)
    track = None
    for r in range(12):  # the signed running mean settles over rounds
        st = mixing_weights(_samples(truth, 1.0, 10, seed=r), g, track, lam_max=1.0)
        track = st.track
    assert st.lam[0] > 0.7  # agreement: μ₀ ~ 0 within its known noise, the low-noise cloud gradient leads
    assert st.lam[1] < 0.1  # a disagreement of 2 against a standard error of ~0.3: the devices lead
    assert st.bias_sq[1] == pytest.approx(4.0, rel=0.3)
    assert st.bias_sq[0] < 0.05
    assert st.n == 10 and st.device_var.shape == (2,)


def test_the_bias_is_measured_relative_to_the_clouds_sign():
    """Flipping a basis column flips c_k and ā_k together: the bias estimate must not change."""
    s = _samples([0.5, 2.0], 1.0, 10)
    a = mixing_weights(s, _guidance([1.0, 1.0]), None, 1.0)
    b = mixing_weights(s * np.array([1.0, -1.0]), _guidance([1.0, -1.0]), None, 1.0)
    np.testing.assert_allclose(a.bias_sq, b.bias_sq)
    np.testing.assert_allclose(a.lam, b.lam)


def test_lambda_is_clipped_and_fixed_lambda_still_measures():
    g = _guidance([0.0, 0.0])
    s = _samples([0.0, 0.0], 1.0, 8)
    assert mixing_weights(s, g, None, lam_max=0.7).lam.max() <= 0.7
    fixed = mixing_weights(s, g, None, lam_max=0.7, fixed=0.3)
    assert fixed.lam.tolist() == [0.3, 0.3] and fixed.device_var.min() > 0 and fixed.track.weight == 1.0


def test_without_device_samples_the_cloud_leads_and_the_track_carries_over():
    g = _guidance([0.5, 0.5])
    assert mixing_weights(None, g, None, lam_max=0.9).lam.tolist() == [1.0, 1.0]
    held = BiasTrack(2.0, [0.4, -0.2], [0.01, 0.01])
    one = mixing_weights(_samples([0.0, 0.0], 1.0, 1), g, held, lam_max=0.9)
    assert one.lam.tolist() == [0.9, 0.9] and one.track == held


def test_normalised_step_is_scale_free_and_tracks_its_scale():
    d = np.array([3.0, -4.0])
    w1, ms1 = normalised(d, None, 0.1)
    w2, _ = normalised(1000 * d, None, 0.1)
    np.testing.assert_allclose(w1, w2, rtol=1e-6)
    assert np.sqrt(np.mean(w1.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-6)
    w3, ms3 = normalised(0.1 * d, ms1, 0.1)  # a smaller gradient after a larger one: a smaller step
    assert np.abs(w3).max() < np.abs(w1).max() and ms3 < ms1
    assert normalised(np.zeros(2), None, 0.1)[0].tolist() == [0.0, 0.0]


def test_scalar_multipliers_divide_by_reports_per_block_and_rms():
    from cooperllm.layout import ParamLayout

    layout = ParamLayout.build([("a", (3,), "layer.0"), ("b", (2,), "layer.1")])
    reports = [Report(1, 0, 0, 3.0, 1), Report(2, 0, 1, -4.0, 1), Report(3, 1, 0, 0.0, 1)]
    q, ms = scalar_multipliers(layout, reports, None, 0.5)
    assert ms == pytest.approx(25.0 / 3)
    assert q[0] == pytest.approx(-0.5 / (2 * np.sqrt(ms))) and q[1] == pytest.approx(-0.5 / np.sqrt(ms))
    assert scalar_multipliers(layout, [], 2.0, 0.5) == ({}, 2.0)


def test_state_round_trips_through_json():
    st = RectifierState({3: BiasTrack(1.9, [0.5, -0.25], [0.1, 0.2])}, {3: 2.0}, 0.125)
    back = RectifierState.from_json(json.loads(json.dumps(st.to_json())))
    assert back == st
    assert RectifierState.from_json(None) == RectifierState()
