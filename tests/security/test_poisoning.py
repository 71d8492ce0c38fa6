"""A malicious device against the aggregation (docs/SECURITY.md §3): each attack, then its refusal or bounded effect.

Real uvicorn server on 127.0.0.1, real HTTP, real SQLite; the attacker holds a valid device token.
"""

from __future__ import annotations

import numpy as np
import pytest
from cloud.helpers import make_reports, theta_from_bytes, wait_round

from cooperllm.api_client import ApiError
from cooperllm.protocol import ERRORS, ReportIn, RunConfig
from cooperllm.rectify import RectifierState
from cooperllm.replay import sync_reports
from cooperllm.strategies import RoundInputs, get_strategy


def _upload_round(devices, rng, poison: dict[int, float] | None = None) -> int:
    """Every device uploads one complete round of N(0, 1) scalars; device i of ``poison`` sends its value instead."""
    infos = [d.current_round() for d in devices]
    for i, (dev, info) in enumerate(zip(devices, infos, strict=True)):
        reports = make_reports(info, rng)
        if poison and i in poison:
            reports = [r.model_copy(update={"scalar": poison[i]}) for r in reports]
        dev.upload_reports(info.round, reports, f"r{info.round}-d{i}")
    return infos[0].round


def test_a_device_gets_exactly_its_quota(live):
    """Finding 2: one device sent 65,540 reports into one round and all were counted."""
    live.admin().create_run(RunConfig(strategy="zo", rounds=2, quorum=3, local_steps=2, blocks=[0], deadline_s=60))
    dev = live.device("greedy")
    info = dev.current_round()
    quota = make_reports(info, np.random.default_rng(0))  # exactly what the round asks: 2 reports
    extra = ReportIn(seed=info.seed_lo + 100, block=0, step=1, scalar=1.0, n_examples=4)
    with pytest.raises(ApiError) as err:
        dev.upload_reports(info.round, [*quota, extra], "too-many")
    assert (err.value.status_code, err.value.detail) == (409, ERRORS["report_quota"])
    assert dev.upload_reports(info.round, quota[:1], "first").accepted == 1
    assert dev.upload_reports(info.round, quota[1:], "second").accepted == 1
    with pytest.raises(ApiError) as err:
        dev.upload_reports(info.round, [extra], "third")
    assert (err.value.status_code, err.value.detail) == (409, ERRORS["report_quota"])
    assert len(live.engine.round_reports(live.engine.state)) == 2


def test_a_huge_scalar_is_left_out_and_cannot_freeze_learning(live):
    """Finding 1 (ZO): one report of 9e5 (inside max_abs_scalar) used to set the running scale σ of every later ZO step,
    so the honest devices' steps shrank by ~1e5 for hundreds of rounds. Now a report beyond clip_k × the round's median
    |scalar| is left out of the round (and of its published sync), and the next honest round takes a step of normal
    size."""
    cfg = RunConfig(strategy="zo", rounds=3, quorum=5, min_devices=5, local_steps=2, blocks=[0], deadline_s=60)
    live.admin().create_run(cfg)
    layout = live.app.state.cooper.host.layout
    devices = [live.device(f"zo{i}") for i in range(5)]
    rng = np.random.default_rng(1)
    r0 = _upload_round(devices, rng, poison={0: 9e5})
    wait_round(devices[0], r0 + 1)
    published = [abs(r.scalar) for r in devices[0].sync(r0).reports]
    assert len(published) == 4 * 2  # the four honest devices' two reports each; the attacker's two are left out
    assert max(published) <= cfg.clip_k * np.median(published)

    r1 = _upload_round(devices, rng)
    wait_round(devices[0], r1 + 1)
    theta1 = theta_from_bytes(devices[0].adapter(r1), layout)
    theta2 = theta_from_bytes(devices[0].adapter(r1 + 1), layout)
    # the same honest round from a clean state: the step size it would have had without the attack
    clean = get_strategy("zo").aggregate(
        theta1, layout, cfg, RoundInputs(reports=sync_reports(devices[0].sync(r1)), state=RectifierState())
    )
    ratio = np.linalg.norm(theta2 - theta1) / np.linalg.norm(clean.theta - theta1)
    assert ratio > 0.5, f"the honest round after the attack moved θ {ratio:.2e}× a clean step"


def test_bp_uploads_are_bounded(live):
    """Finding 1 (bp): one upload with a delta of 3e38 and n_examples 1e6 dominated FedAvg. Now the weight is capped
    at the examples a device can use in a round, and each Δθ at clip_k × the round's median norm."""
    cfg = RunConfig(strategy="bp", rounds=2, quorum=3, min_devices=3, local_steps=1, batch_size=8, deadline_s=60)
    live.admin().create_run(cfg)
    n = live.app.state.cooper.host.layout.total
    layout = live.app.state.cooper.host.layout
    devices = [live.device(f"bp{i}") for i in range(3)]
    r0 = devices[0].current_round().round
    theta0 = theta_from_bytes(devices[0].adapter(r0), layout)
    with pytest.raises(ApiError) as err:
        devices[0].upload_delta(r0, np.zeros(n, np.float32), 1_000_000, "heavy")
    assert (err.value.status_code, err.value.detail) == (422, ERRORS["too_many_examples"])
    bad = np.zeros(n, np.float32)
    bad[0] = np.inf
    with pytest.raises(ApiError) as err:
        devices[0].upload_delta(r0, bad, 8, "inf")
    assert err.value.status_code == 422
    rng = np.random.default_rng(2)
    honest = [rng.normal(0, 1e-3, n).astype(np.float32) for _ in range(2)]
    devices[0].upload_delta(r0, np.full(n, 3e38, np.float32), 8, "huge")
    for dev, delta in zip(devices[1:], honest, strict=True):
        dev.upload_delta(r0, delta, 8, "honest")
    wait_round(devices[0], r0 + 1)
    step = theta_from_bytes(devices[0].adapter(r0 + 1), layout) - theta0
    bound = cfg.eta * cfg.clip_k * max(np.linalg.norm(d) for d in honest)
    assert np.isfinite(step).all() and np.linalg.norm(step) <= bound * 1.001
