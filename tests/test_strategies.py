"""Strategy objects: the registry, what each one asks of a round, and that aggregation and replay agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction, direction
from cooperllm.protocol import ReportIn, RunConfig
from cooperllm.rectify import RectifierState, direction_lambda, rectify, subspace_samples
from cooperllm.strategies import STRATEGY_NAMES, DeviceWork, RoundInputs, Upload, get_strategy
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance, Report, ReportError, check_report


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
    cfg = RunConfig(local_steps=3)
    blocks = [0, 1]
    zgr, zo, bp = (get_strategy(n).configure_round(cfg, blocks) for n in ("zgr", "zo", "bp"))
    # a zgr step measures the subspace and the complement: twice the reports (and forward passes) of a zo step
    assert (zgr.directions, zgr.guided, zgr.device_work, zgr.uploads_per_device) == (
        (Direction.SUBSPACE, Direction.COMPLEMENT),
        True,
        DeviceWork.ZO,
        12,
    )
    assert (zo.directions, zo.guided, zo.device_work, zo.uploads_per_device) == (
        (Direction.ISO,),
        False,
        DeviceWork.ZO,
        6,
    )
    assert (bp.guided, bp.device_work, bp.uploads_per_device) == (False, DeviceWork.BACKPROP, 1)
    assert get_strategy("bp").upload is Upload.DELTA and get_strategy("zo").upload is Upload.REPORTS
    assert (get_strategy("bp").default_eta, get_strategy("bp").default_local_lr) == (1.0, 1e-3)


def test_zo_aggregate_is_a_normalised_zo_step_and_leaves_theta():
    layout, theta, _, reports = _round()
    before = theta.copy()
    cfg = RunConfig(strategy="zo", eta_zo=0.05)
    agg = get_strategy("zo").aggregate(theta, layout, cfg, RoundInputs(reports=reports))
    sigma = np.sqrt(np.mean([r.scalar**2 for r in reports]))
    expected = theta.astype(np.float64)
    for r in reports:  # two reports per block: θ_b −= η_zo · mean (p/σ)·z
        expected[layout.blocks[r.block].slice] -= (
            0.05 / 2 * r.scalar / sigma * direction(r.seed, r.block, layout.blocks[r.block].size, Direction.ISO)
        )
    np.testing.assert_allclose(agg.theta, expected, rtol=0, atol=1e-6)
    assert (agg.lam, agg.n_used, agg.state.scalar_ms) == (None, 4, pytest.approx(sigma**2))
    assert theta.tobytes() == before.tobytes()
    # scale-free: scalars ten times larger give the same first step
    big = [Report(r.seed, r.block, r.step, 10 * r.scalar, r.n_examples) for r in reports]
    agg10 = get_strategy("zo").aggregate(theta, layout, cfg, RoundInputs(reports=big))
    np.testing.assert_allclose(agg10.theta, agg.theta, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("lam", "rule"), [(0.25, "axis"), ("auto", "axis"), ("auto", "direction")])
def test_zgr_aggregate_publishes_the_rectifier_and_takes_its_normalised_step(lam, rule):
    """The published numbers are what ``rectify`` computes from the round; the subspace step is −η·d/√ms in the
    first round, ms the mean square of the cloud's c (axis rule) or of d itself (per-direction rule); a fixed λ mixes
    each direction plainly, d = λc + (1 − λ)ā."""
    layout, theta, guidance, reports = _zgr_round(1)
    cfg = RunConfig(strategy="zgr", lam=lam, lam_max=0.9, eta=0.1, eta_zo=0.01, rectifier=rule)
    agg = get_strategy("zgr").aggregate(theta, layout, cfg, RoundInputs(reports=reports, guidance=guidance))
    zgr = get_strategy("zgr")
    samples = subspace_samples(layout, reports, zgr.directions, guidance)
    fixed = None if lam == "auto" else lam
    stats, d, axis = rectify(samples, guidance, RectifierState(), 0.9, fixed, by_direction=rule == "direction")
    published = agg.stats["blocks"]["1"]
    assert published == stats[1].to_json() and published["n"] == 3 and len(published["lam"]) == 2
    assert agg.stats["axis"] == axis.to_json() and axis.blocks == 2  # measured and published under either rule
    c = guidance[1].coeffs.astype(np.float64)
    if lam == 0.25:
        np.testing.assert_allclose(d[1], 0.25 * c + 0.75 * np.array(published["device_mean"]))
        assert published["lam"] == [0.25, 0.25]
    elif rule == "axis":
        assert published["lam"] == [axis.lam] * 2 and 0.0 <= axis.lam <= 0.9
    else:
        lam_k = np.array(published["lam"])
        assert all(0.0 <= x <= 0.9 for x in lam_k) and lam_k.tolist() == direction_lambda(stats[1], 0.9).tolist()
        np.testing.assert_allclose(d[1], lam_k * c + (1 - lam_k) * np.array(published["device_mean"]))
    scale = d[1] if rule == "direction" else c
    w = agg.update[1].w
    np.testing.assert_allclose(w, -0.1 * d[1] / np.sqrt(np.mean(scale**2)), rtol=1e-6)  # first round: ms = mean²
    assert agg.lam == pytest.approx(np.mean(agg.stats["blocks"]["0"]["lam"] + published["lam"]))
    assert set(agg.state.bias) == {0, 1} and agg.state.step_ms[1] == pytest.approx(np.mean(scale**2))
    assert agg.state.axis == axis.track


def test_zgr_needs_guidance():
    layout, theta, _, reports = _zgr_round()
    with pytest.raises(ValueError, match="guidance"):
        get_strategy("zgr").aggregate(theta, layout, RunConfig(), RoundInputs(reports=reports))


@pytest.mark.parametrize("name", ["zo", "zgr", "cloud"])
def test_replay_reaches_the_aggregated_theta_bit_for_bit(name):
    layout, theta, guidance, reports = _zgr_round(2)
    strategy = get_strategy(name)
    cfg = RunConfig(strategy=name, lam="auto", eta=0.2, eta_zo=0.02)
    inputs = RoundInputs(reports=reports if strategy.directions else [], guidance=guidance if strategy.guided else {})
    if name == "zo":
        inputs = RoundInputs(reports=[r for r in reports if r.step % 2 == 1])
    agg = strategy.aggregate(theta, layout, cfg, inputs)
    replayed = theta.copy()
    strategy.replay(replayed, layout, inputs.reports, inputs.guidance, agg.update)
    assert replayed.tobytes() == agg.theta.tobytes()
    assert replayed.tobytes() != theta.tobytes()


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
        get_strategy("bp").replay(theta.copy(), layout, [], {}, {})


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


def test_cloud_is_zgrs_subspace_step_with_lambda_one():
    layout, theta, guidance, reports = _zgr_round(4)
    cfg = RunConfig(strategy="cloud", eta=0.2)
    strategy = get_strategy("cloud")
    plan = strategy.configure_round(cfg, [0, 1])
    assert (plan.guided, plan.device_work, plan.uploads_per_device) == (True, DeviceWork.IDLE, 0)
    agg = strategy.aggregate(theta, layout, cfg, RoundInputs(guidance=guidance))
    assert (agg.lam, agg.n_used) == (1.0, 0)
    zgr = get_strategy("zgr").aggregate(
        theta, layout, RunConfig(lam=1.0, eta=0.2), RoundInputs(reports=[], guidance=guidance)
    )
    assert agg.theta.tobytes() == zgr.theta.tobytes()  # zgr with λ = 1 and no reports is the cloud step
    for b, g in guidance.items():
        c = g.coeffs.astype(np.float64)
        np.testing.assert_allclose(agg.update[b].w, -0.2 * c / np.sqrt(np.mean(c**2)), rtol=1e-6)
    with pytest.raises(ValueError, match="guidance"):
        strategy.aggregate(theta, layout, cfg, RoundInputs())


def _zgr_round(seed: int = 0):
    """A zgr round on both blocks: three batches, each measured along the subspace (even step) and complement."""
    layout = _layout()
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(layout.total).astype(np.float32)
    guidance = {
        b: BlockGuidance(
            np.linalg.qr(rng.standard_normal((n, 2)))[0].astype(np.float32),
            rng.standard_normal(2).astype(np.float32),
            coeff_var=np.full(2, 0.01),
        )
        for b, n in ((0, 10), (1, 5))
    }
    reports = [Report(20 + s, ALL_BLOCKS, s, float(rng.normal()), 4) for s in range(6)]
    return layout, theta, guidance, reports


def test_budget_follow_moves_three_rounds_in_four_to_iso_directions_only_after_tests_found_lambda_low():
    zgr, blocks = get_strategy("zgr"), [0, 1]
    follow, fixed = RunConfig(budget="follow"), RunConfig()
    low, high = RectifierState(tests=3, lam_trend=0.1), RectifierState(tests=3, lam_trend=0.5)
    both, moved = (Direction.SUBSPACE, Direction.COMPLEMENT), (Direction.ISO, Direction.ISO)
    assert [zgr.configure_round(follow, blocks, r, low).directions for r in (1, 2, 3, 5)] == [moved] * 4
    assert [zgr.configure_round(follow, blocks, r, low).directions for r in (0, 4, 8)] == [both] * 3  # tests the cloud
    assert zgr.configure_round(follow, blocks, 1, high).directions == both
    assert zgr.configure_round(follow, blocks, 1, None).directions == both
    too_soon = RectifierState(tests=2, lam_trend=0.1, lam=0.1)  # the first rounds' λ is low with any cloud
    assert zgr.configure_round(follow, blocks, 1, too_soon).directions == both
    assert zgr.configure_round(fixed, blocks, 1, low).directions == both
    plans = [zgr.configure_round(follow, blocks, 1, s) for s in (low, high)]
    assert plans[0].uploads_per_device == plans[1].uploads_per_device  # the same forward budget
    with pytest.raises(ValueError, match="budget 'follow' moves zgr's measurements"):
        RunConfig(strategy="zo", budget="follow")


def test_a_moved_round_is_a_zo_step_on_its_own_scale_with_no_step_along_the_cloud_and_replays():
    """A round measured along ISO directions only: every report enters a zo step normalised by the ISO scalars' own
    running RMS (the complement's σ carries over untouched), nothing moves θ along the turned-down cloud, λ carries
    over, and replay needs the round's directions (the strategy's own give another θ)."""
    layout, theta, guidance, reports = _zgr_round(5)
    cfg = RunConfig(eta=0.2, eta_zo=1e-2, budget="follow", rectifier="axis")
    moved = (Direction.ISO, Direction.ISO)
    state = RectifierState(lam=0.1, scalar_ms=123.0, step_ms={0: 1.0, 1: 2.0}, tests=3, lam_trend=0.1)
    agg = get_strategy("zgr").aggregate(
        theta, layout, cfg, RoundInputs(reports=reports, guidance=guidance, state=state, directions=moved)
    )
    assert agg.lam == pytest.approx(0.1) and agg.state.lam == pytest.approx(0.1) and agg.stats["axis"] is None
    assert all(u.w is None for u in agg.update.values())
    assert agg.state.scalar_ms == 123.0 and agg.state.step_ms == state.step_ms
    assert (agg.state.tests, agg.state.lam_trend) == (3, 0.1)  # nothing tested: the trend carries over
    ms = float(np.mean([r.scalar**2 for r in reports]))
    assert agg.state.iso_ms == pytest.approx(ms)
    assert {b: u.q for b, u in agg.update.items()} == {b: pytest.approx(-1e-2 / (6 * ms**0.5)) for b in (0, 1)}
    zo = theta.copy()  # the same step as zo's on the same reports
    get_strategy("zo").replay(zo, layout, reports, {}, agg.update)
    assert zo.tobytes() == agg.theta.tobytes()
    assert RectifierState.from_json(agg.state.to_json()) == agg.state
    replayed = theta.copy()
    get_strategy("zgr").replay(replayed, layout, reports, guidance, agg.update, moved)
    assert replayed.tobytes() == agg.theta.tobytes()
    default = theta.copy()
    get_strategy("zgr").replay(default, layout, reports, guidance, agg.update)
    assert default.tobytes() != agg.theta.tobytes()


def test_a_zgr_round_refuses_complement_and_iso_measurements_together():
    layout, theta, guidance, reports = _zgr_round(5)
    mixed = (Direction.COMPLEMENT, Direction.ISO)
    with pytest.raises(ValueError, match="not both"):
        get_strategy("zgr").aggregate(
            theta, layout, RunConfig(), RoundInputs(reports=reports, guidance=guidance, directions=mixed)
        )


def test_a_tested_round_counts_and_moves_the_lambda_trend():
    layout, theta, guidance, reports = _zgr_round(5)
    cfg = RunConfig(lam=0.4)
    state = RectifierState(tests=2, lam_trend=0.1)
    agg = get_strategy("zgr").aggregate(
        theta, layout, cfg, RoundInputs(reports=reports, guidance=guidance, state=state)
    )
    assert agg.state.tests == 3
    assert agg.state.lam_trend == pytest.approx(0.7 * 0.1 + 0.3 * agg.state.lam)


@pytest.mark.parametrize(
    ("state", "held_back"),
    [
        (RectifierState(tests=3, lam_trend=0.1), True),  # turned down
        (RectifierState(tests=2, lam_trend=0.9), True),  # not yet tested FOLLOW_AFTER times: on probation
        (RectifierState(), True),
        (RectifierState(tests=3, lam_trend=0.5), False),  # tested and found right: followed
    ],
)
def test_a_test_round_keeps_the_devices_part_alone_while_the_cloud_is_turned_down_or_untested(state, held_back):
    """budget 'follow': a round that measures the subspace tests the cloud (λ and the tracks move on), but while
    the cloud is turned down, or before FOLLOW_AFTER rounds have tested it, its step leaves out λ·c — the same round
    under 'fixed' differs by exactly that; a cloud tested and found right is followed as under 'fixed'."""
    layout, theta, guidance, reports = _zgr_round(5)
    steps = {}
    for budget in ("fixed", "follow"):
        cfg = RunConfig(eta=0.2, lam=0.3, budget=budget, rectifier="axis")  # steps scaled by c, uncapped
        agg = get_strategy("zgr").aggregate(
            theta, layout, cfg, RoundInputs(reports=reports, guidance=guidance, state=state)
        )
        steps[budget] = agg.update
        assert agg.state.tests == state.tests + 1 and agg.lam == pytest.approx(0.3)
    for b, g in guidance.items():
        c = g.coeffs.astype(np.float64)
        cloud_part = -0.2 * 0.3 * c / np.sqrt(np.mean(c**2)) if held_back else np.zeros_like(c)
        np.testing.assert_allclose(steps["fixed"][b].w - steps["follow"][b].w, cloud_part, rtol=1e-5, atol=1e-7)
