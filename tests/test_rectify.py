"""The rectifier's λ (tested along the cloud's direction), its per-direction numbers and its scale-free steps
(cooperllm.rectify)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cooperllm.rectify import (
    BiasTrack,
    RectifierState,
    direction_lambda,
    direction_stats,
    normalised,
    rectify,
    scalar_multipliers,
    subspace_steps,
)
from cooperllm.significance import student_t975
from cooperllm.zgr import BlockGuidance, Report


def _guidance(c, tau2=0.0) -> BlockGuidance:
    c = np.asarray(c, dtype=np.float32)
    return BlockGuidance(np.eye(6, len(c), dtype=np.float32), c, coeff_var=np.full(len(c), tau2))


def _samples(mean, sd, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(mean) + sd * rng.standard_normal((n, len(mean)))


def _rounds(truth, cloud, rounds=12, sd=1.0, n=10, tau2=1e-4, lam_max=1.0):
    """``rounds`` rounds of two blocks whose devices measure ``truth`` (per block) with noise ``sd`` against the
    cloud's ``cloud``; returns the last round's (stats, d, axis) and state."""
    state = RectifierState()
    guidance = {b: _guidance(c, tau2) for b, c in enumerate(cloud)}
    for r in range(rounds):
        samples = {b: _samples(t, sd, n, seed=10 * r + b) for b, t in enumerate(truth)}
        stats, d, axis = rectify(samples, guidance, state, lam_max)
        state = RectifierState({b: st.track for b, st in stats.items()}, axis=axis.track)
    return stats, d, axis, state


def test_lambda_trusts_a_cloud_that_agrees_with_the_devices():
    """The cloud's c is the devices' own gradient: along ĉ the devices confirm its slope ‖c‖, b_∥² stays ~0, and
    the low-noise cloud leads (λ = s_∥²/(s_∥² + τ_∥²))."""
    truth = [[1.0, 0.5], [-0.5, 0.0]]
    stats, d, axis, _ = _rounds(truth, truth)
    assert axis.bias_sq < 0.05 and axis.lam > 0.9
    assert axis.device_proj == pytest.approx(axis.cloud_norm, abs=4 * np.sqrt(axis.device_se2))
    assert all(st.lam.tolist() == [axis.lam] * 2 for st in stats.values())  # the weight of every c_k
    np.testing.assert_allclose(np.concatenate([d[0], d[1]]), np.concatenate(truth), atol=0.3)


def test_lambda_falls_when_the_devices_refute_the_clouds_direction():
    """The cloud claims the loss falls along ĉ; the devices measure the opposite slope there, pooled over every
    direction and, round after round, significant: λ → 0 and the step follows the devices, against the cloud."""
    truth = [[-1.0, -1.0], [-1.0, -1.0]]
    cloud = [[1.0, 1.0], [1.0, 1.0]]
    stats, d, axis, state = _rounds(truth, cloud, sd=3.0)
    assert axis.lam < 0.1 and axis.bias_sq == pytest.approx(16.0, rel=0.5)  # (a_∥ − ‖c‖)² = (−2 − 2)²
    assert axis.device_proj < 0 and float(np.concatenate([d[0], d[1]]) @ np.ones(4)) < 0  # d goes against c
    assert state.axis is axis.track and axis.track.weight > 1  # the running test carries over


def test_the_axis_test_does_not_depend_on_a_basis_columns_sign():
    """Flipping basis column 1 flips c_1 and ā_1 together: λ, b² and ω stay, and d flips in that coordinate."""
    samples = {0: _samples([0.5, 2.0], 1.0, 10)}
    flip = np.array([1.0, -1.0])
    s1, d1, a1 = rectify(samples, {0: _guidance([1.0, 1.0])}, RectifierState(), 1.0)
    s2, d2, a2 = rectify({0: samples[0] * flip}, {0: _guidance([1.0, -1.0])}, RectifierState(), 1.0)
    assert (a1.lam, a1.bias_sq, a1.keep) == pytest.approx((a2.lam, a2.bias_sq, a2.keep))
    np.testing.assert_allclose(d1[0] * flip, d2[0])
    np.testing.assert_allclose(s1[0].bias_sq, s2[0].bias_sq)  # the per-direction diagnostic too


def test_the_devices_part_off_the_clouds_direction_is_kept_as_far_as_it_stands_above_its_noise():
    """ω = max(0, 1 − noise/‖ā_⊥‖²): a strong, precise gradient off ĉ is kept almost whole; pure noise mostly not."""
    cloud = [[1.0, 0.0, 0.0, 0.0]]
    strong = rectify({0: _samples([1.0, 5.0, -5.0, 5.0], 0.1, 20)}, {0: _guidance(cloud[0])}, RectifierState(), 1.0)
    noise = rectify({0: _samples([1.0, 0.0, 0.0, 0.0], 1.0, 20)}, {0: _guidance(cloud[0])}, RectifierState(), 1.0)
    assert strong[2].keep > 0.99 and noise[2].keep < 0.6
    assert strong[2].perp_sq == pytest.approx(75.0, rel=0.02)


def test_pure_noise_off_the_clouds_direction_is_left_out_in_almost_every_round():
    """Five devices, no gradient but the cloud's: the positive-part weight alone would keep some noise in about half
    of the rounds; the significance test keeps ā_⊥ and a_∥ in few (each test's level is 2.5–5 %)."""
    m, rounds = 31, 400
    g = {0: _guidance([1.0] + [0.0] * (m - 1))}
    g[0] = BlockGuidance(np.eye(40, m, dtype=np.float32), g[0].coeffs, coeff_var=np.zeros(m))
    kept = kept_along = 0
    for r in range(rounds):
        rng = np.random.default_rng(r)
        p = rng.standard_normal(5) * rng.choice([1.0, 3.0], 5)  # one scalar a device, its signs spread by ξ
        samples = rng.choice([-1.0, 1.0], (5, m)) * p[:, None]
        axis = rectify({0: samples}, g, RectifierState(), 1.0)[2]
        kept += axis.keep > 0
        kept_along += axis.keep_along > 0
    assert kept / rounds < 0.06 and kept_along / rounds < 0.08


def test_student_t_quantiles_match_the_tables():
    for dof, table in [(1, 12.706), (2, 4.303), (4, 2.776), (6, 2.447), (9, 2.262), (20, 2.086), (120, 1.980)]:
        assert student_t975(dof) == pytest.approx(table, abs=2e-3)
    assert student_t975(0) == float("inf")


def test_lambda_is_clipped_and_a_fixed_lambda_mixes_plainly_and_still_measures():
    g = {0: _guidance([0.0, 1.0])}
    s = {0: _samples([0.0, 0.0], 1.0, 8)}
    assert rectify(s, g, RectifierState(), lam_max=0.7)[2].lam <= 0.7
    stats, d, axis = rectify(s, g, RectifierState(), lam_max=0.7, fixed=0.3)
    np.testing.assert_allclose(d[0], 0.3 * g[0].coeffs + 0.7 * s[0].mean(axis=0))
    assert stats[0].lam.tolist() == [0.3, 0.3] and stats[0].device_var.min() > 0 and stats[0].track.weight == 1.0
    assert axis is not None and axis.track.weight == 1.0


def test_without_device_samples_the_cloud_leads_and_the_tracks_carry_over():
    g = {0: _guidance([0.5, 0.5])}
    stats, d, axis = rectify({}, g, RectifierState(), lam_max=0.9)
    assert stats[0].lam.tolist() == [1.0, 1.0] and d[0].tolist() == [0.5, 0.5] and axis is None
    held = BiasTrack(2.0, [0.4, -0.2], [0.01, 0.01])
    stats, d, axis = rectify({0: _samples([0.0, 0.0], 1.0, 1)}, g, RectifierState({0: held}), lam_max=0.9)
    assert stats[0].lam.tolist() == [1.0, 1.0] and stats[0].track == held and axis is None
    assert direction_stats(None, g[0], None).n == 0


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
    st = RectifierState({3: BiasTrack(1.9, [0.5, -0.25], [0.1, 0.2])}, {3: 2.0}, 0.125, BiasTrack(1.0, [0.3], [0.1]))
    back = RectifierState.from_json(json.loads(json.dumps(st.to_json())))
    assert back == st
    assert RectifierState.from_json(None) == RectifierState()


def test_the_clouds_slope_is_taken_net_of_its_own_noise():
    """ĉ is chosen by the cloud's own noisy c = g + ε, so ‖c‖ overstates the slope along ĉ by about Σ τ²/‖c‖; the
    test compares the devices' slope with κ = (‖c‖² − Σ τ²)/‖c‖ instead. Here Σ τ² = ‖g‖², as in the study's rounds:
    against ‖c‖ an in-domain cloud would carry a bias of ~0.6 every round; against κ what is left (the ratio's
    second-order bias, ~0.2) is a fraction of it."""
    rng = np.random.default_rng(7)
    g = np.full(16, 0.25)  # ‖g‖² = 1
    tau2 = 1.0 / 16
    state, gaps = RectifierState(), []
    for r in range(20):
        c = g + np.sqrt(tau2) * rng.standard_normal(16)
        guidance = {b: _guidance(c[8 * b : 8 * b + 8], tau2) for b in range(2)}
        samples = {b: _samples(g[8 * b : 8 * b + 8], 0.5, 40, seed=100 * r + b) for b in range(2)}
        stats, _, axis = rectify(samples, guidance, state, 1.0)
        state = RectifierState({b: st.track for b, st in stats.items()}, axis=axis.track)
        gaps.append(axis.cloud_norm - axis.device_proj)
        assert axis.cloud_slope == pytest.approx(max(0.0, axis.cloud_norm - 1.0 / axis.cloud_norm))
    assert np.mean(gaps) > 0.4 and np.mean(gaps) > 4 * np.std(gaps) / np.sqrt(len(gaps))  # ‖c‖ overstates
    assert axis.bias_sq < 0.25 * np.mean(gaps) ** 2


def test_a_refuted_cloud_and_noisy_devices_leave_a_small_step():
    """The cloud claims a slope of 2 along ĉ, the devices measure ~0 with a noise of ~0.5 per round: the cloud is
    refuted (λ → 0), and the devices' own slope, within its noise, is mostly shrunk away (ω_∥ small), so the
    subspace step is a fraction of the cloud's instead of the devices' noise at the cloud's scale."""
    truth = [[0.0, 0.0], [0.0, 0.0]]
    cloud = [[1.0, 1.0], [1.0, 1.0]]
    _, d, axis, _ = _rounds(truth, cloud, sd=1.4, n=8)
    assert axis.lam < 0.05 and axis.bias_sq > 1.0
    assert axis.keep_along == pytest.approx(max(0.0, 1.0 - axis.device_se2 / axis.device_proj**2))
    step = np.linalg.norm(np.concatenate([d[0], d[1]]))
    assert step < 0.5 * axis.cloud_norm


def test_the_per_direction_rule_trusts_the_cloud_where_it_agrees_and_the_devices_where_it_does_not():
    """RunConfig.rectifier 'direction': direction 0, the cloud agrees with the devices on average; direction 1, it
    points the other way. The running per-direction test settles over rounds and each λ_k follows its own."""
    truth = np.array([1.0, 1.0])
    g = {0: _guidance([1.0, -1.0], tau2=1e-4)}
    state = RectifierState()
    for r in range(12):
        stats, d, _ = rectify({0: _samples(truth, 1.0, 10, seed=r)}, g, state, lam_max=1.0, by_direction=True)
        state = RectifierState({0: stats[0].track})
    st = stats[0]
    assert st.lam[0] > 0.7 and st.lam[1] < 0.1
    assert st.bias_sq[1] == pytest.approx(4.0, rel=0.3) and st.bias_sq[0] < 0.05
    np.testing.assert_allclose(d[0], st.lam * st.cloud + (1 - st.lam) * st.device_mean)
    assert direction_lambda(direction_stats(None, g[0], None), 0.9).tolist() == [1.0, 1.0]
    one = direction_stats(_samples([0.0, 0.0], 1.0, 1), g[0], None)
    assert direction_lambda(one, 0.9).tolist() == [0.9, 0.9]


def test_a_capped_step_moves_a_block_no_further_than_a_full_cloud_step():
    """The axis rule's step is scaled by the cloud's c; where c is small and the devices' part of d is large, the cap
    (√max(ms, mean d²)) keeps the block's step at η per coordinate instead of amplifying d by their ratio."""
    c = {0: np.array([1e-3, -1e-3]), 1: np.array([1.0, 2.0])}
    d = {0: np.array([0.5, 0.5]), 1: 0.1 * c[1]}
    free, _ = subspace_steps(d, c, {}, 0.1)
    capped, ms = subspace_steps(d, c, {}, 0.1, capped=True)
    assert np.sqrt(np.mean(free[0].astype(np.float64) ** 2)) > 40  # 0.5/1e-3 × η
    assert np.sqrt(np.mean(capped[0].astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-6)
    np.testing.assert_array_equal(capped[1], free[1])  # a turned-down cloud (d = 0.1 c) is untouched by the cap
    assert ms == {0: pytest.approx(1e-6), 1: pytest.approx(2.5)}  # the running scale is still the cloud's
