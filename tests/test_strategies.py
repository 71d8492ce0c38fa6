"""Strategy objects: the registry, what each one asks of a round, and that aggregation and replay agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.layout import ParamLayout
from cooperllm.protocol import ReportIn, RunConfig
from cooperllm.strategies import STRATEGY_NAMES, DeviceWork, RoundInputs, Upload, get_strategy
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance, Report, ReportError, apply_round, check_report, online_lambda


def _layout() -> ParamLayout:
    return ParamLayout.build([("a", (2, 3), "layer.0"), ("b", (4,), "layer.0"), ("c", (5,), "layer.1")])


def _round(seed: int = 0):
    layout = _layout()
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(layout.total).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((5, 2)))[0].astype(np.float32)
    guidance = {1: BlockGuidance(basis, np.array([0.3, -0.7], dtype=np.float32))}
    reports = [Report(11, 0, 0, 0.5, 4), Report(12, 1, 0, -2.0, 4), Report(13, 1, 1, 0.75, 4), Report(14, 0, 1, 1.5, 4)]
    return layout, theta, guidance, reports


def test_registry_names_and_unknown():
    assert STRATEGY_NAMES == ("zgr", "zo", "bp", "cloud")
    assert [get_strategy(n).name for n in STRATEGY_NAMES] == list(STRATEGY_NAMES)
    with pytest.raises(ValueError, match="unknown strategy 'fedprox'"):
        get_strategy("fedprox")
    # the wire model accepts exactly the registry's names
    assert RunConfig.model_json_schema()["properties"]["strategy"]["enum"] == list(STRATEGY_NAMES)


def test_configure_round_per_strategy():
    cfg = RunConfig(local_steps=3, alpha=0.4)
    blocks = [0, 1]
    zgr, zo, bp = (get_strategy(n).configure_round(cfg, blocks) for n in ("zgr", "zo", "bp"))
    assert (zgr.alpha, zgr.guided, zgr.device_work, zgr.uploads_per_device) == (0.4, True, DeviceWork.ZO, 6)
    assert (zo.alpha, zo.guided, zo.device_work, zo.uploads_per_device) == (1.0, False, DeviceWork.ZO, 6)
    assert (bp.guided, bp.device_work, bp.uploads_per_device) == (False, DeviceWork.BACKPROP, 1)
    assert get_strategy("bp").upload is Upload.DELTA and get_strategy("zo").upload is Upload.REPORTS
    assert (get_strategy("bp").default_eta, get_strategy("bp").default_local_lr) == (1.0, 1e-3)


def test_zo_aggregate_is_the_unguided_round_and_leaves_theta():
    layout, theta, _, reports = _round()
    before = theta.copy()
    cfg = RunConfig(strategy="zo", eta=0.05)
    agg = get_strategy("zo").aggregate(theta, layout, cfg, RoundInputs(reports=reports))
    expected = theta.copy()
    apply_round(expected, layout, reports, {}, 1.0, 0.0, 0.05)
    assert agg.theta.tobytes() == expected.tobytes()
    assert (agg.lam, agg.n_used) == (0.0, 4)
    assert theta.tobytes() == before.tobytes()


@pytest.mark.parametrize("lam", [0.25, "auto"])
def test_zgr_aggregate_mixes_with_lambda(lam):
    layout, theta, guidance, reports = _round(1)
    cfg = RunConfig(strategy="zgr", alpha=0.5, lam=lam, lam_max=0.9, eta=0.1)
    inputs = RoundInputs(reports=reports, guidance=guidance, cloud_var=0.02)
    agg = get_strategy("zgr").aggregate(theta, layout, cfg, inputs)
    want_lam = 0.25 if lam == 0.25 else online_lambda(layout, reports, guidance, 0.5, 0.02, 0.9)[0]
    expected = theta.copy()
    apply_round(expected, layout, reports, guidance, 0.5, want_lam, 0.1)
    assert agg.lam == want_lam
    assert agg.theta.tobytes() == expected.tobytes()
    assert bool(agg.terms) == (lam == "auto")


def test_zgr_auto_needs_the_cloud_variance():
    layout, theta, guidance, reports = _round()
    cfg = RunConfig(strategy="zgr", lam="auto")
    with pytest.raises(ValueError, match="cloud variance"):
        get_strategy("zgr").aggregate(theta, layout, cfg, RoundInputs(reports=reports, guidance=guidance))


@pytest.mark.parametrize("name", ["zo", "zgr"])
def test_replay_reaches_the_aggregated_theta_bit_for_bit(name):
    layout, theta, guidance, reports = _round(2)
    strategy = get_strategy(name)
    cfg = RunConfig(strategy=name, alpha=0.3, lam="auto", eta=0.2)
    inputs = RoundInputs(reports=reports, guidance=guidance if strategy.guided else {}, cloud_var=0.1)
    agg = strategy.aggregate(theta, layout, cfg, inputs)
    replayed = theta.copy()
    strategy.replay(replayed, layout, reports, inputs.guidance, strategy.device_alpha(cfg), agg.lam, cfg.eta)
    assert replayed.tobytes() == agg.theta.tobytes()


def test_bp_is_fedavg_of_deltas_weighted_by_examples():
    layout, theta, _, _ = _round(3)
    rng = np.random.default_rng(3)
    d1, d2 = (rng.standard_normal(layout.total).astype(np.float32) for _ in range(2))
    cfg = RunConfig(strategy="bp", eta=0.5)
    agg = get_strategy("bp").aggregate(theta, layout, cfg, RoundInputs(deltas=[(8, d1), (24, d2)]))
    mean = 0.25 * d1.astype(np.float64) + 0.75 * d2.astype(np.float64)
    assert np.allclose(agg.theta, theta + np.float32(0.5) * mean.astype(np.float32), atol=0, rtol=0)
    assert agg.n_used == 2
    with pytest.raises(ValueError, match="at least one delta"):
        get_strategy("bp").aggregate(theta, layout, cfg, RoundInputs())
    with pytest.raises(ValueError, match="cannot be replayed"):
        get_strategy("bp").replay(theta.copy(), layout, [], {}, 1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("report", "key"),
    [
        (ReportIn(seed=100, block=3, step=0, scalar=1.0, n_examples=1), "unknown_block"),
        (ReportIn(seed=100, block=0, step=2, scalar=1.0, n_examples=1), "bad_step"),
        (ReportIn(seed=99, block=0, step=0, scalar=1.0, n_examples=1), "seed_out_of_range"),
        (ReportIn(seed=100, block=0, step=0, scalar=-50.5, n_examples=1), "scalar_out_of_range"),
    ],
)
def test_the_one_report_check_names_the_rule_broken(report, key):
    rules = {"blocks": {0, 1}, "local_steps": 2, "seeds": (100, 200), "max_abs_scalar": 50.0}
    with pytest.raises(ReportError) as exc:
        check_report(report, **rules)
    assert exc.value.key == key
    check_report(ReportIn(seed=199, block=1, step=1, scalar=-50.0, n_examples=1), **rules)  # the edges pass


def test_non_finite_scalars_are_refused_everywhere():
    with pytest.raises(ReportError):
        Report(1, ALL_BLOCKS, 0, float("nan"), 1)
    with pytest.raises(ValueError, match="finite"):
        ReportIn(seed=1, block=0, step=0, scalar=float("inf"), n_examples=1)


def test_cloud_is_zgrs_cloud_step_alone():
    layout, theta, guidance, _ = _round(4)
    strategy = get_strategy("cloud")
    cfg = RunConfig(strategy="cloud", alpha=0.3, eta=0.2)
    plan = strategy.configure_round(cfg, [0, 1])
    assert (plan.guided, plan.device_work, plan.uploads_per_device) == (True, DeviceWork.IDLE, 0)
    agg = strategy.aggregate(theta, layout, cfg, RoundInputs(guidance=guidance))
    expected = theta.copy()
    apply_round(expected, layout, [], guidance, 0.3, 1.0, 0.2)  # zgr's update with λ = 1 and no reports
    assert agg.theta.tobytes() == expected.tobytes()
    assert (agg.lam, agg.n_used) == (1.0, 0)
    dense = theta.astype(np.float64)
    dense[layout.blocks[1].slice] -= 0.2 * guidance[1].basis.astype(np.float64) @ guidance[1].coeffs
    np.testing.assert_allclose(agg.theta, dense, rtol=0, atol=1e-6)
    replayed = theta.copy()
    strategy.replay(replayed, layout, [], guidance, strategy.device_alpha(cfg), agg.lam, cfg.eta)
    assert replayed.tobytes() == agg.theta.tobytes()
    with pytest.raises(ValueError, match="guidance"):
        strategy.aggregate(theta, layout, cfg, RoundInputs())
