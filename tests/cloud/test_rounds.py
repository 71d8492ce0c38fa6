"""A full federated round against a real uvicorn server: uploads, quorum, aggregation, replay, idempotency."""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.api_client import ApiError
from cooperllm.layout import theta_checksum
from cooperllm.protocol import ReportIn, RunConfig

from .helpers import make_reports, replay, theta_from_bytes, wait_round


def test_full_zgr_round_replays_bit_exactly(live):
    admin = live.admin()
    cfg = RunConfig(
        strategy="zgr",
        rounds=3,
        quorum=3,
        local_steps=2,
        lam=0.3,
        eta=0.05,
        guidance_rank=2,
        window=4,
        grad_batches=2,
        grad_batch_size=4,
        deadline_s=60,
    )
    run = admin.create_run(cfg)
    devices = [live.device(f"d{i}") for i in range(3)]
    layout = live.engine.host.layout
    theta0 = theta_from_bytes(devices[0].adapter(0), layout)
    assert theta_checksum(theta0) == run.theta_checksum
    rng = np.random.default_rng(0)
    for rnd in range(2):
        infos = [d.current_round() for d in devices]
        assert {i.round for i in infos} == {rnd} and infos[0].status == "open"
        assert len(infos[0].guidance) == len(layout.blocks)
        assert len({(i.seed_lo, i.seed_hi) for i in infos}) == 3  # disjoint seed ranges per device
        for d, info in zip(devices, infos, strict=True):
            for g in info.guidance:
                basis = d.guidance(rnd, g.block)
                assert basis.shape == (g.rows, g.m)
                assert np.allclose(basis.T @ basis, np.eye(g.m), atol=0.1)  # DTC frames are lossy
            ack = d.upload_reports(rnd, make_reports(info, rng), f"r{rnd}-{info.seed_lo}")
            assert ack.accepted == info.local_steps * len(info.blocks) and not ack.replay
        nxt = wait_round(devices[0], rnd + 1)
        assert nxt.round == rnd + 1
        theta1 = replay(devices[1], layout, rnd, theta0)
        sync = devices[1].sync(rnd)
        assert len(sync.reports) == 3 * 2 * len(layout.blocks) and sync.lam == pytest.approx(0.3)
        assert theta_checksum(theta1) == sync.theta_checksum_after == nxt.theta_checksum
        assert np.array_equal(theta_from_bytes(devices[2].adapter(rnd + 1), layout), theta1)
        assert not np.array_equal(theta1, theta0)
        theta0 = theta1
    rounds = admin.rounds(run.run_id)
    assert [r.status for r in rounds] == ["closed", "closed", "open"]
    assert all(r.rectifier_s is not None and r.rectifier_s > 0 for r in rounds)
    m = admin.metrics()
    assert m.rectifier and m.rectifier[0]["backward_passes"] >= 0 and m.reports_total >= 24


def test_idempotent_reupload_never_counts_twice(live):
    admin = live.admin()
    admin.create_run(RunConfig(strategy="zo", rounds=2, quorum=2, local_steps=1, blocks=[-1], deadline_s=60))
    dev = live.device()
    info = dev.current_round()
    reports = make_reports(info, np.random.default_rng(1))
    before = admin.metrics().reports_total
    first = dev.upload_reports(info.round, reports, "batch-1")
    again = dev.upload_reports(info.round, reports, "batch-1")
    assert (first.accepted, first.replay) == (1, False)
    assert (again.accepted, again.replay) == (0, True)
    other_key = dev.upload_reports(info.round, reports, "batch-2")  # same reports under a new key
    assert (other_key.accepted, other_key.duplicates) == (0, 1)
    with pytest.raises(ApiError) as err:
        dev.upload_reports(info.round, make_reports(info, np.random.default_rng(2)), "batch-1")
    assert err.value.status_code == 409 and err.value.detail == "idempotency key reused with a different body"
    assert admin.metrics().reports_total == before + 1
    assert admin.metrics().idempotent_replays >= 1


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
    devs = [live.device(f"dl{i}") for i in range(2)]
    for i, d in enumerate(devs):
        info = d.current_round()
        d.upload_reports(0, make_reports(info, np.random.default_rng(i))[:1], f"dl-{i}")  # partial: not complete
    info = wait_round(devs[0], 1, timeout=10)
    assert info.round == 1 and info.status == "finished"
    r0 = admin.rounds(run.run_id)[0]
    assert r0.status == "closed" and r0.n_reports == 2 and r0.n_devices == 2 and r0.extensions == 0
    assert admin.run(run.run_id).status == "finished"


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
    m = admin.metrics()
    assert m.rounds_failed >= 1 and m.rounds_extended >= 2


def test_bp_strategy_is_fedavg_of_deltas(live):
    admin = live.admin()
    admin.create_run(RunConfig(strategy="bp", rounds=2, quorum=2, eta=1.0, deadline_s=60))
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
            lam_max=0.8,
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
    rng = np.random.default_rng(11)
    for d in devs:
        info = d.current_round()
        d.upload_reports(0, make_reports(info, rng), f"auto-{info.seed_lo}")
    wait_round(devs[0], 1)
    sync = devs[0].sync(0)
    assert 0.0 <= sync.lam <= 0.8
    assert admin.rounds(run.run_id)[0].lam == sync.lam
    theta1 = replay(devs[1], layout, 0, theta0)
    assert theta_checksum(theta1) == sync.theta_checksum_after


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
