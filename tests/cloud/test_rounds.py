"""A full federated round against a real uvicorn server: uploads, quorum, aggregation, replay, idempotency."""

from __future__ import annotations

import numpy as np
import pytest
from live_cloud import small_run

from cooperllm.api_client import ApiError
from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.perturb import perturbation
from cooperllm.protocol import Metrics, ModelSync, ReportIn, RunConfig

from .helpers import make_reports, replay, theta_from_bytes, wait_round

COUNTERS = (
    "devices",
    "reports_total",
    "uploads_total",
    "idempotent_replays",
    "duplicates",
    "late_reports",
    "rounds_closed",
    "rounds_failed",
    "rounds_extended",
)


def moved(before: Metrics, after: Metrics) -> dict[str, int]:
    """The counters a test changed, and by how much: the server is shared by the module, so its totals depend on
    what ran before, but the change a test causes is exact. Rejections appear as ``rejected.<reason>``."""
    out = {k: getattr(after, k) - getattr(before, k) for k in COUNTERS}
    out.update({f"rejected.{k}": n - before.rejected.get(k, 0) for k, n in after.rejected.items()})
    return {k: n for k, n in out.items() if n}


def expected_online_lambda(
    layout: ParamLayout, sync: ModelSync, bases: dict[int, np.ndarray], cloud_var: float, lam_max: float
) -> tuple[float, float]:
    """(λ*, ‖b̄‖²) recomputed from what the server published, after its formula (DESIGN.md §5.5), not its code.

    Per guided block b with k_b ≥ 2 reports: dσ²_b = n_b·var(p)/k_b (sample variance), ĝ_Z = Σ p·z(seed, b)/k_b along
    the round's guided perturbations, disagreement ‖ĝ_Z − V_b c_b‖². Then ‖b̄‖² = max(0, Σ disagreement − dσ² − τ²)
    and λ* = dσ² / (dσ² + ‖b̄‖² + τ²), clipped to [0, λ_max]."""
    zo_var = disagreement = 0.0
    for g in sync.guidance:
        mine = [r for r in sync.reports if r.block == g.block]
        assert all(r.block >= 0 for r in sync.reports) and len(mine) >= 2  # single-block reports, σ² measurable
        n_b = layout.blocks[g.block].size
        p = np.array([r.scalar for r in mine])
        zo_var += n_b * p.var(ddof=1) / len(mine)
        g_z = sum(
            r.scalar * perturbation(r.seed, g.block, n_b, bases[g.block], sync.alpha).astype(np.float64) for r in mine
        )
        g_c = bases[g.block].astype(np.float64) @ np.asarray(g.coeffs, dtype=np.float32).astype(np.float64)
        disagreement += float(np.sum((g_z / len(mine) - g_c) ** 2))
    bias_sq = max(0.0, disagreement - zo_var - cloud_var)
    return min(max(zo_var / (zo_var + bias_sq + cloud_var), 0.0), lam_max), bias_sq


def test_full_zgr_round_replays_bit_exactly(live):
    admin = live.admin()
    cfg = small_run(quorum=3, grad_batches=2)
    before = admin.metrics()
    run = admin.create_run(cfg)
    devices = [live.device(f"d{i}") for i in range(3)]
    layout = live.engine.host.layout
    per_round = 3 * cfg.local_steps * len(layout.blocks)  # every device completes every block, every step
    theta0 = theta_from_bytes(devices[0].adapter(0), layout)
    assert theta_checksum(theta0) == run.theta_checksum
    rng = np.random.default_rng(0)
    for rnd in range(2):
        infos = [d.current_round() for d in devices]
        assert {i.round for i in infos} == {rnd} and infos[0].status == "open"
        assert [(g.block, g.m) for g in infos[0].guidance] == [(b, 2) for b in range(len(layout.blocks))]
        assert len({(i.seed_lo, i.seed_hi) for i in infos}) == 3  # disjoint seed ranges per device
        for d, info in zip(devices, infos, strict=True):
            for g in info.guidance:
                basis = d.guidance(rnd, g.block)
                assert basis.shape == (g.rows, g.m)
                assert np.allclose(basis.T @ basis, np.eye(g.m), atol=0.1)  # DTC frames are lossy
            ack = d.upload_reports(rnd, make_reports(info, rng), f"r{rnd}-{info.seed_lo}")
            assert (ack.accepted, ack.duplicates, ack.clipped, ack.replay) == (per_round // 3, 0, 0, False)
        nxt = wait_round(devices[0], rnd + 1)
        assert nxt.round == rnd + 1
        theta1 = replay(devices[1], layout, rnd, theta0)
        sync = devices[1].sync(rnd)
        assert (
            len(sync.reports) == per_round and sync.lam == 0.3 and sync.theta_checksum_before == infos[0].theta_checksum
        )
        assert theta_checksum(theta1) == sync.theta_checksum_after == nxt.theta_checksum
        assert np.array_equal(theta_from_bytes(devices[2].adapter(rnd + 1), layout), theta1)
        assert not np.array_equal(theta1, theta0)
        theta0 = theta1
    rounds = admin.rounds(run.run_id)
    assert [r.status for r in rounds] == ["closed", "closed", "open"]
    assert [(r.n_reports, r.n_devices, r.lam, r.extensions) for r in rounds] == [
        (per_round, 3, 0.3, 0),
        (per_round, 3, 0.3, 0),
        (0, 0, None, 0),
    ]
    assert [r.theta_checksum_after for r in rounds[:2]] == [r.theta_checksum for r in rounds[1:]]
    m = admin.metrics()
    # guidance for rounds 0, 1, 2: round r's computed at θ of round r − 1 (θ₀ for 0 and 1), grad_batches backward
    # passes each, a window of the newest gradients (2 of round 0's set, then 2 + 2 older ones), rank guidance_rank
    assert [
        (c["run_id"], c["round"], c["theta_round"], c["backward_passes"], c["window"], c["rank"]) for c in m.rectifier
    ] == [(run.run_id, 0, 0, 2, 2, 2), (run.run_id, 1, 0, 2, 4, 2), (run.run_id, 2, 1, 2, 4, 2)]
    assert [r.rectifier_s for r in rounds] == [c["seconds"] for c in m.rectifier] and all(
        r.rectifier_s > 0 for r in rounds
    )
    assert moved(before, m) == {"devices": 3, "uploads_total": 6, "rounds_closed": 2, "reports_total": 2 * per_round}
    assert m.last_lambda == 0.3


def test_idempotent_reupload_never_counts_twice(live):
    admin = live.admin()
    admin.create_run(RunConfig(strategy="zo", rounds=2, quorum=2, local_steps=1, blocks=[-1], deadline_s=60))
    dev = live.device()
    info = dev.current_round()
    reports = make_reports(info, np.random.default_rng(1))
    before = admin.metrics()
    first = dev.upload_reports(info.round, reports, "batch-1")
    again = dev.upload_reports(info.round, reports, "batch-1")
    assert (first.accepted, first.replay) == (1, False)
    assert (again.accepted, again.replay) == (0, True)
    other_key = dev.upload_reports(info.round, reports, "batch-2")  # same reports under a new key
    assert (other_key.accepted, other_key.duplicates, other_key.replay) == (0, 1, False)
    with pytest.raises(ApiError) as err:
        dev.upload_reports(info.round, make_reports(info, np.random.default_rng(2)), "batch-1")
    assert err.value.status_code == 409 and err.value.detail == "idempotency key reused with a different body"
    after = admin.metrics()
    assert after.reports_total == before.reports_total + 1
    assert moved(before, after) == {
        "uploads_total": 2,  # batch-1 and batch-2; the replay and the conflict are not uploads
        "idempotent_replays": 1,
        "duplicates": 1,
        "reports_total": 1,
        "rejected.idempotency_conflict": 1,
    }


def test_deadline_closes_with_min_devices(live):
    admin = live.admin()
    run = admin.create_run(
        RunConfig(
            strategy="zo",
            rounds=1,
            quorum=3,
            min_devices=2,
            local_steps=2,
            blocks=[0],
            deadline_s=0.6,
            max_extensions=3,
        )
    )
    before = admin.metrics()
    devs = [live.device(f"dl{i}") for i in range(2)]
    for i, d in enumerate(devs):
        info = d.current_round()
        d.upload_reports(0, make_reports(info, np.random.default_rng(i))[:1], f"dl-{i}")  # partial: not complete
    info = wait_round(devs[0], 1, timeout=10)
    assert info.round == 1 and info.status == "finished"
    r0 = admin.rounds(run.run_id)[0]
    assert r0.status == "closed" and r0.n_reports == 2 and r0.n_devices == 2 and r0.extensions == 0
    assert r0.lam == 0.0 and r0.theta_checksum_after == info.theta_checksum != r0.theta_checksum
    assert admin.run(run.run_id).status == "finished"
    assert moved(before, admin.metrics()) == {"devices": 2, "uploads_total": 2, "rounds_closed": 1, "reports_total": 2}


def test_too_few_devices_extends_then_fails_loudly(live):
    admin = live.admin()
    run = admin.create_run(
        RunConfig(
            strategy="zo",
            rounds=2,
            quorum=2,
            min_devices=2,
            local_steps=1,
            blocks=[0],
            deadline_s=0.3,
            max_extensions=2,
        )
    )
    before = admin.metrics()
    dev = live.device("lonely")
    info = dev.current_round()
    dev.upload_reports(0, make_reports(info, np.random.default_rng(0)), "lonely-0")
    assert wait_round(dev, 99, timeout=10).status == "failed"
    summary = admin.run(run.run_id)
    assert summary.status == "failed" and "fewer than min_devices=2" in summary.failure
    r0 = admin.rounds(run.run_id)[0]
    assert r0.status == "failed" and r0.extensions == 2
    with pytest.raises(ApiError) as err:
        dev.upload_reports(0, make_reports(info, np.random.default_rng(1)), "lonely-1")
    assert err.value.status_code == 409 and err.value.detail.startswith("run failed")
    assert moved(before, admin.metrics()) == {
        "devices": 1,
        "uploads_total": 1,
        "rounds_extended": 2,  # max_extensions, then the failure
        "rounds_failed": 1,
        "reports_total": 1,
        "rejected.run_failed": 1,
    }


def test_bp_strategy_is_fedavg_of_deltas(live):
    admin = live.admin()
    run = admin.create_run(RunConfig(strategy="bp", rounds=2, quorum=2, eta=1.0, deadline_s=60))
    layout = live.engine.host.layout
    devs = [live.device(f"bp{i}") for i in range(2)]
    theta0 = theta_from_bytes(devs[0].adapter(0), layout)
    rng = np.random.default_rng(7)
    deltas = [rng.normal(0, 0.01, layout.total).astype(np.float32) for _ in devs]
    for d, delta, n in zip(devs, deltas, (10, 30), strict=True):
        ack = d.upload_delta(0, delta, n, f"delta-{n}")
        assert ack.accepted == 1
        assert d.upload_delta(0, delta, n, f"delta-{n}").replay  # idempotent
    with pytest.raises(ApiError) as err:
        devs[0].upload_reports(0, make_reports(devs[0].current_round(), rng), "zo-in-bp")
    assert err.value.status_code == 409
    wait_round(devs[0], 1)
    theta1 = theta_from_bytes(devs[0].adapter(1), layout)
    expected = theta0 + (0.25 * deltas[0].astype(np.float64) + 0.75 * deltas[1]).astype(np.float32)
    np.testing.assert_allclose(theta1, expected, atol=1e-7)
    assert not devs[0].sync(0).replayable
    r0 = admin.rounds(run.run_id)[0]
    assert (r0.status, r0.n_reports, r0.n_devices, r0.lam) == ("closed", 2, 2, 0.0)  # one delta per device, no λ


def test_online_lambda_is_published_and_replayable(live):
    admin = live.admin()
    run = admin.create_run(
        RunConfig(
            strategy="zgr",
            rounds=2,
            quorum=2,
            local_steps=3,
            blocks=[0, 1],
            lam="auto",
            lam_max=0.3,
            eta=0.05,
            guidance_rank=2,
            grad_batches=3,
            grad_batch_size=8,
            deadline_s=60,
        )
    )
    layout = live.engine.host.layout
    devs = [live.device(f"auto{i}") for i in range(2)]
    theta0 = theta_from_bytes(devs[0].adapter(0), layout)
    # Per block 6 scalars mean ± spread, signs balanced (device 0: + − +, device 1: − + −). Whatever the seeds:
    # round 0 (mean 0.1, spread 0.03): the mean pulls ĝ_Z off the cloud's V c far more than the devices' noise dσ²
    # explains, so ‖b̄‖² > 0 and λ* lies inside (0, λ_max): the estimate itself is what gets published.
    # round 1 (mean 0, spread 1): dσ² dwarfs τ², and ‖b̄‖² cannot reach 2.33·dσ² (the guided part of ĝ_Z is bounded),
    # so λ* > λ_max = 0.3 and the clip decides.
    for rnd, mean, spread in ((0, 0.1, 0.03), (1, 0.0, 1.0)):
        sent = []
        for i, d in enumerate(devs):
            info = d.current_round()
            reports = [
                r.model_copy(update={"scalar": mean + spread * (-1) ** (r.step + i)})
                for r in make_reports(info, np.random.default_rng(0))
            ]
            d.upload_reports(rnd, reports, f"auto-{rnd}-{info.seed_lo}")
            sent += reports
        wait_round(devs[0], rnd + 1)
        sync = devs[0].sync(rnd)
        m = admin.metrics()
        (cost,) = [c for c in m.rectifier if (c["run_id"], c["round"]) == (run.run_id, rnd)]
        bases = {g.block: devs[1].guidance(rnd, g.block) for g in sync.guidance}
        assert [g.block for g in sync.guidance] == [0, 1] and len(sync.reports) == 2 * 3 * 2
        assert [(r.seed, r.scalar) for r in sync.reports] == sorted((r.seed, r.scalar) for r in sent)
        estimate, bias_sq = expected_online_lambda(layout, sync, bases, cost["cloud_var"], lam_max=1.0)
        if rnd == 0:
            assert 0.0 < estimate < 0.3 and bias_sq > 0.0
            assert sync.lam == pytest.approx(estimate, rel=1e-9)
        else:
            assert estimate > 0.3 and sync.lam == 0.3
        assert admin.rounds(run.run_id)[rnd].lam == sync.lam == m.last_lambda
        theta1 = replay(devs[1], layout, rnd, theta0)
        assert theta_checksum(theta1) == sync.theta_checksum_after
        theta0 = theta1
    assert admin.run(run.run_id).status == "finished"


def test_online_lambda_estimator_limits():
    from cooperllm.zgr import lambda_star

    assert lambda_star(1.0, 0.0, 0.0) == 1.0  # an unbiased, noiseless cloud gets all the weight
    assert lambda_star(0.0, 1.0, 1.0) == 0.0  # noiseless devices keep it
    assert lambda_star(1.0, 1.0, 2.0, lam_max=0.9) == pytest.approx(0.25)
    assert lambda_star(5.0, 0.0, 0.0, lam_max=0.7) == 0.7


def test_dtc_report_frame_upload_counts_like_json(live):
    admin = live.admin()
    admin.create_run(RunConfig(strategy="zo", rounds=2, quorum=5, local_steps=2, blocks=[0, 1], deadline_s=60))
    dev = live.device("frame")
    info = dev.current_round()
    reports = make_reports(info, np.random.default_rng(3))
    ack = dev.upload_report_frame(info.round, reports, "frame-1")
    assert (ack.accepted, ack.replay) == (4, False)
    assert dev.upload_reports(info.round, reports, "frame-1").replay  # same reports, same key, other encoding
    stored = live.engine.round_reports(live.engine.state)
    assert sorted((r.seed, r.scalar) for r in stored) == sorted((r.seed, r.scalar) for r in reports)  # exact f64
    import httpx

    r = httpx.post(
        f"{live.url}/v1/rounds/{info.round}/reports/frame",
        content=b"CDTC\x01\x02garbage",
        headers={"Authorization": f"Bearer {dev.token}", "Idempotency-Key": "bad"},
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("malformed tensor frame")


def test_scalar_clipping_option(live):
    live.admin().create_run(
        RunConfig(
            strategy="zo",
            rounds=2,
            quorum=5,
            local_steps=1,
            blocks=[0],
            clip_scalar=1.0,
            max_abs_scalar=100.0,
            deadline_s=60,
        )
    )
    dev = live.device("clip")
    info = dev.current_round()
    ack = dev.upload_reports(
        info.round, [ReportIn(seed=info.seed_lo, block=0, step=0, scalar=-7.5, n_examples=2)], "clip-1"
    )
    assert (ack.accepted, ack.clipped) == (1, 1)
    assert [r.scalar for r in live.engine.round_reports(live.engine.state)] == [-1.0]
