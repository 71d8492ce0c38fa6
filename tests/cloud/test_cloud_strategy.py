"""The ``cloud`` baseline on a real server: rounds close with no device, θ moves by the cloud's public-data step
alone (zgr's normalised subspace step with λ = 1 and no reports), and a device replays every round bit for bit."""

from __future__ import annotations

import numpy as np

from cooperllm.layout import theta_checksum
from cooperllm.protocol import RunConfig
from cooperllm.rectify import BETA
from cooperllm.replay import sync_update
from cooperllm.strategies import get_strategy

from .helpers import replay, theta_from_bytes, wait_round


def test_cloud_rounds_need_no_device_and_replay_exactly(live):
    admin = live.admin()
    cfg = RunConfig(strategy="cloud", rounds=3, eta=0.05, guidance_rank=2, window=4, grad_batches=1, grad_batch_size=4)
    run = admin.create_run(cfg)
    dev = live.device("observer")
    info = wait_round(dev, 3, timeout=120)
    assert (info.round, info.status) == (3, "finished")
    assert get_strategy("cloud").configure_round(cfg, info.blocks).uploads_per_device == 0
    layout = live.engine.host.layout
    summaries = admin.rounds(run.run_id)
    assert [(s.round, s.status, s.n_reports, s.n_devices, s.lam) for s in summaries] == [
        (r, "closed", 0, 0, 1.0) for r in range(3)
    ]
    theta = theta_from_bytes(dev.adapter(0), layout)
    ms: dict[int, float] = {}  # per block, the running mean square of the step d = c (zgr's with λ = 1)
    for r in range(3):
        sync = dev.sync(r)
        assert (sync.reports, sync.lam, sync.replayable) == ([], 1.0, True)
        rect = summaries[r].rectifier["blocks"]
        assert sorted(rect) == sorted(str(g.block) for g in sync.guidance) and summaries[r].rectifier["axis"] is None
        assert all(st["n"] == 0 and st["lam"] == [1.0] * len(st["cloud"]) for st in rect.values())
        # the step is the cloud's alone: θ_b − η·V_b c_b/√ms_b per guided block, ms_b = EMA_β of mean(c_b²)
        update = sync_update(sync)
        assert sorted(update) == [g.block for g in sync.guidance]
        expected = theta.astype(np.float64)
        for g in sync.guidance:
            c = np.asarray(g.coeffs, dtype=np.float64)
            ms[g.block] = float(np.mean(c**2)) if r == 0 else BETA * ms[g.block] + (1 - BETA) * float(np.mean(c**2))
            w = -0.05 * c / np.sqrt(ms[g.block])
            assert update[g.block].q == 0.0
            np.testing.assert_allclose(update[g.block].w, w, rtol=1e-6)
            basis = dev.guidance(r, g.block).astype(np.float64)
            expected[layout.blocks[g.block].slice] += basis @ w
        after = replay(dev, layout, r, theta)
        assert theta_checksum(after) == sync.theta_checksum_after == summaries[r].theta_checksum_after
        np.testing.assert_allclose(after, expected, rtol=0, atol=1e-6)
        assert not np.array_equal(after, theta)  # the public data moved θ
        theta = after
    assert theta_checksum(theta_from_bytes(dev.adapter(3), layout)) == theta_checksum(theta)
