"""A full federated round against a real uvicorn server: uploads, quorum, aggregation, replay, idempotency."""

from __future__ import annotations

import json

import numpy as np
import pytest
from live_cloud import small_run
from sqlalchemy import select

from cloud_api import db
from cooperllm.api_client import ApiError
from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.perturb import STREAM_XI, Direction, rademacher, subspace_scale
from cooperllm.protocol import Metrics, ModelSync, ReportIn, RunConfig
from cooperllm.rectify import BETA, RectifierState, rectify
from cooperllm.replay import sync_guidance, sync_reports, sync_update
from cooperllm.strategies import RoundInputs, get_strategy
from cooperllm.zgr import BlockGuidance

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


ZGR = (Direction.SUBSPACE, Direction.COMPLEMENT)


def subspace_samples(layout: ParamLayout, sync: ModelSync, bases: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Per guided block, the devices' subspace estimates a = ξ·p/s of the round (docs/PERTURBATIONS.md §4), recomputed
    from what the server published, after the formula, not the rectifier's code: report step s measured
    ``ZGR[s mod 2]``; only SUBSPACE measurements count."""
    rows: dict[int, list[np.ndarray]] = {}
    for r in sync.reports:
        if ZGR[r.step % 2] is not Direction.SUBSPACE:
            continue
        assert r.block >= 0  # single-block reports here
        n, m = bases[r.block].shape
        xi = rademacher(r.seed, r.block, m, STREAM_XI).astype(np.float64)
        rows.setdefault(r.block, []).append(xi * (r.scalar / float(subspace_scale(n, m))))
    return {b: np.stack(v) for b, v in rows.items()}


def coeff_var(live, run_id: int, round_: int) -> dict[int, np.ndarray]:
    """τ_k² per block as the rectifier stored it beside the round's guidance."""
    with live.engine.db.connect() as conn:
        rows = conn.execute(
            select(db.guidance.c.block, db.guidance.c.coeff_var).where(
                db.guidance.c.run_id == run_id, db.guidance.c.round == round_
            )
        ).all()
    return {b: np.asarray(json.loads(v), dtype=np.float64) for b, v in rows}


def test_full_zgr_round_replays_bit_exactly(live):
    admin = live.admin()
    cfg = small_run(quorum=3, grad_batches=2)
    before = admin.metrics()
    run = admin.create_run(cfg)
    devices = [live.device(f"d{i}") for i in range(3)]
    layout = live.engine.host.layout
    # every device completes every block, every step, measuring the subspace then the complement
    per_round = 3 * cfg.local_steps * len(layout.blocks) * len(ZGR)
    theta0 = theta_from_bytes(devices[0].adapter(0), layout)
    assert theta_checksum(theta0) == run.theta_checksum
    rng = np.random.default_rng(0)
    for rnd in range(2):
        infos = [d.current_round() for d in devices]
        assert {i.round for i in infos} == {rnd} and infos[0].status == "open"
        assert infos[0].directions == ["subspace", "complement"]
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
        assert len(sync.reports) == per_round and sync.theta_checksum_before == infos[0].theta_checksum
        assert sync.lam == pytest.approx(0.3, rel=1e-12)  # the fixed λ, for every block and direction
        # one published update per block: the complement multiplier q and a rank-2 subspace step w
        assert [(u.block, len(u.w)) for u in sync.update] == [(b, 2) for b in range(len(layout.blocks))]
        assert all(u.q < 0 for u in sync.update)
        assert theta_checksum(theta1) == sync.theta_checksum_after == nxt.theta_checksum
        assert np.array_equal(theta_from_bytes(devices[2].adapter(rnd + 1), layout), theta1)
        assert not np.array_equal(theta1, theta0)
        theta0 = theta1
    rounds = admin.rounds(run.run_id)
    assert [r.status for r in rounds] == ["closed", "closed", "open"]
    assert [(r.n_reports, r.n_devices, r.extensions) for r in rounds] == [
        (per_round, 3, 0),
        (per_round, 3, 0),
        (0, 0, 0),
    ]
    assert [r.lam for r in rounds[:2]] == [pytest.approx(0.3, rel=1e-12)] * 2 and rounds[2].lam is None
    for r in rounds[:2]:  # per block: λ = 0.3 for k < m, measured on 3 devices × local_steps subspace samples
        blocks = r.rectifier["blocks"]
        assert sorted(blocks) == [str(b) for b in range(len(layout.blocks))] and r.rectifier["axis"]["blocks"] > 0
        assert all(st["lam"] == [0.3, 0.3] and st["n"] == 3 * cfg.local_steps for st in blocks.values())
    assert rounds[2].rectifier is None
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
    assert m.last_lambda == rounds[1].lam


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
    assert r0.lam is None and r0.rectifier is None  # zo mixes nothing
    assert r0.theta_checksum_after == info.theta_checksum != r0.theta_checksum
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
    # n_examples up to local_steps × batch_size = 32 per upload (the cap on an upload's FedAvg weight)
    cfg = RunConfig(strategy="bp", rounds=2, quorum=2, eta=1.0, local_steps=2, batch_size=16, deadline_s=60)
    run = admin.create_run(cfg)
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
    assert (r0.status, r0.n_reports, r0.n_devices, r0.lam) == ("closed", 2, 2, None)  # one delta per device, no λ


def test_rectifier_numbers_are_published_and_replayable(live):
    """lam 'auto': each round publishes the rectifier's numbers per block and direction and its test along the
    cloud's direction (the round summary; λ's mean in the summary, the ModelSync and the metrics), equal to
    ``rectify`` of the round's subspace samples, the cloud's c and τ² and the tracks carried from the previous round;
    the whole aggregation, recomputed from the published record and that carried state, gives the published update
    and θ; and the round replays bit-exactly.
    """
    admin = live.admin()
    cfg = RunConfig(
        strategy="zgr",
        rounds=2,
        quorum=2,
        local_steps=3,
        blocks=[0, 1],
        lam="auto",
        lam_max=0.9,
        rectifier="axis",
        eta=0.05,
        eta_zo=1e-3,
        guidance_rank=2,
        grad_batches=3,
        grad_batch_size=8,
        deadline_s=60,
    )
    run = admin.create_run(cfg)
    layout = live.engine.host.layout
    devs = [live.device(f"auto{i}") for i in range(2)]
    theta0 = theta_from_bytes(devs[0].adapter(0), layout)
    # SUBSPACE scalars p = s·ξ_0·x make the devices' estimate of direction 0 exactly a_0 = x (a_1 = ξ_0ξ_1·x); the
    # 6 samples per block alternate x = offset ± spread. Block 0 (offset, spread) = (1, 0.01) in round 0 and
    # (0.5, 0.01) in round 1: precise devices far from the cloud's c_0; in round 1 the biases come from the signed
    # running means over both rounds. Block 1: (0, 100) both rounds: the devices' noise dwarfs the rest.
    plan = {0: {0: (1.0, 0.01), 1: (0.0, 100.0)}, 1: {0: (0.5, 0.01), 1: (0.0, 100.0)}}  # round: block: x
    state = RectifierState()
    for rnd in range(2):
        sent = []
        for i, d in enumerate(devs):
            info = d.current_round()
            assert info.directions == ["subspace", "complement"]
            rows = {g.block: (g.rows, g.m) for g in info.guidance}
            reports = []
            for r in make_reports(info, np.random.default_rng(rnd)):
                if ZGR[r.step % 2] is Direction.SUBSPACE:
                    n, m = rows[r.block]
                    xi0 = float(rademacher(r.seed, r.block, m, STREAM_XI)[0])
                    offset, spread = plan[rnd][r.block]
                    x = offset + spread * (-1) ** (r.step // 2 + i)
                    r = r.model_copy(update={"scalar": float(subspace_scale(n, m)) * xi0 * x})
                reports.append(r)
            d.upload_reports(rnd, reports, f"auto-{rnd}-{info.seed_lo}")
            sent += reports
        wait_round(devs[0], rnd + 1)
        sync = devs[0].sync(rnd)
        summary = admin.rounds(run.run_id)[rnd]
        m = admin.metrics()
        bases = {g.block: devs[1].guidance(rnd, g.block) for g in sync.guidance}
        assert [g.block for g in sync.guidance] == [0, 1] and len(sync.reports) == 2 * 3 * 2 * 2
        assert [(r.seed, r.scalar) for r in sync.reports] == sorted((r.seed, r.scalar) for r in sent)
        tau2 = coeff_var(live, run.run_id, rnd)
        (cost,) = [c for c in m.rectifier if (c["run_id"], c["round"]) == (run.run_id, rnd)]
        assert sum(float(v.sum()) for v in tau2.values()) == pytest.approx(cost["cloud_var"], rel=1e-9)
        guidance = {
            g.block: BlockGuidance(bases[g.block], np.asarray(g.coeffs, dtype=np.float32), coeff_var=tau2[g.block])
            for g in sync.guidance
        }
        samples = subspace_samples(layout, sync, bases)
        stats, _, axis = rectify(samples, guidance, state, cfg.lam_max)
        for b, st in stats.items():
            published = summary.rectifier["blocks"][str(b)]
            assert published["n"] == 6 and published["lam"] == pytest.approx(st.lam.tolist(), rel=1e-9, abs=1e-15)
            assert published["bias_sq"] == pytest.approx(st.bias_sq.tolist(), rel=1e-9, abs=1e-15)
            assert published["cloud_var"] == tau2[b].tolist() and published["cloud"] == guidance[b].coeffs.tolist()
            assert samples[b][:, 0].mean() == pytest.approx(plan[rnd][b][0], abs=1e-6)  # ā_0 = the offset
        assert summary.rectifier["axis"] == pytest.approx(axis.to_json(), rel=1e-9, abs=1e-15)
        assert 0.0 <= axis.lam <= cfg.lam_max and axis.blocks == 2
        lams = np.concatenate([st.lam for st in stats.values()]).tolist()
        assert lams == [axis.lam] * len(lams)  # one weight of the cloud for every block and direction
        if rnd == 1:  # the running tests: round 0's disagreement still counts, so a fresh estimate would differ
            fresh = rectify(samples, guidance, RectifierState(), cfg.lam_max)
            assert (fresh[2].track.weight, axis.track.weight) == (1.0, pytest.approx(1.0 + BETA))
            assert not np.allclose(fresh[0][0].bias_sq, summary.rectifier["blocks"]["0"]["bias_sq"])
        assert summary.lam == sync.lam == m.last_lambda == pytest.approx(np.mean(lams), rel=1e-9)
        # the whole aggregation from the published record and the state carried from the previous round
        agg = get_strategy("zgr").aggregate(
            theta0, layout, cfg, RoundInputs(reports=sync_reports(sync), guidance=guidance, state=state)
        )
        published_update = sync_update(sync)
        assert sorted(published_update) == sorted(agg.update) == [0, 1]
        for b, u in agg.update.items():
            assert published_update[b].q == u.q and published_update[b].w.tobytes() == u.w.tobytes()
        assert theta_checksum(agg.theta) == sync.theta_checksum_after
        theta1 = replay(devs[1], layout, rnd, theta0)
        assert theta_checksum(theta1) == sync.theta_checksum_after == summary.theta_checksum_after
        assert np.array_equal(theta_from_bytes(devs[0].adapter(rnd + 1), layout), theta1)
        theta0, state = theta1, agg.state
    assert admin.run(run.run_id).status == "finished"


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


def test_rounds_after_a_turned_down_cloud_give_their_budget_to_iso_directions_and_replay(live):
    """RunConfig.budget 'follow' with λ 0.1 (below FOLLOW_BELOW): after three rounds have tested the cloud, rounds 3
    and 5 ask for two ISO measurements per step instead of subspace + complement, their syncs name them, and a device
    replays them bit for bit; round 4 keeps the subspace measurement that tests the cloud."""
    admin = live.admin()
    run = admin.create_run(small_run(rounds=6, lam=0.1, budget="follow", quorum=2, min_devices=2, grad_batches=2))
    devices = [live.device(f"f{i}") for i in range(2)]
    layout = live.engine.host.layout
    theta = theta_from_bytes(devices[0].adapter(0), layout)
    assert theta_checksum(theta) == run.theta_checksum
    rng = np.random.default_rng(1)
    asked = []
    for rnd in range(6):
        infos = [d.current_round() for d in devices]
        asked.append(infos[0].directions)
        for d, info in zip(devices, infos, strict=True):
            ack = d.upload_reports(rnd, make_reports(info, rng), f"b{rnd}-{info.seed_lo}")
            assert ack.accepted == info.local_steps * len(info.blocks) * 2  # the same budget every round
        nxt = wait_round(devices[0], rnd + 1)
        sync = devices[1].sync(rnd)
        assert sync.directions == infos[0].directions
        replayed = replay(devices[1], layout, rnd, theta)
        assert theta_checksum(replayed) == sync.theta_checksum_after == nxt.theta_checksum
        if rnd == 3:  # the same record replayed with the strategy's own directions gives another θ
            wrong = theta.copy()
            bases = {g.block: devices[1].guidance(rnd, g.block) for g in sync.guidance}
            get_strategy("zgr").replay(wrong, layout, sync_reports(sync), sync_guidance(sync, bases), sync_update(sync))
            assert theta_checksum(wrong) != sync.theta_checksum_after
        theta = replayed
    both, moved = ["subspace", "complement"], ["iso", "iso"]
    assert asked == [both, both, both, moved, both, moved]
    rounds = admin.rounds(run.run_id)
    assert rounds[3].rectifier["axis"] is None and rounds[2].rectifier["axis"] is not None  # nothing tested in 3
    assert [r.lam for r in rounds] == [pytest.approx(0.1, rel=1e-12)] * 6
