"""End to end with real two-point ZO estimates: devices measure L(θ ± εz) with the eager tiny model along the
guided perturbations of the downloaded bases, the server aggregates; every round's update is a descent direction
(negative inner product with the true gradient) and, with the cloud's rectification, the loss goes down."""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.perturb import perturbation
from cooperllm.protocol import ReportIn, RunConfig
from cooperllm.strategies import get_strategy

from .helpers import replay, theta_from_bytes, wait_round

pytestmark = pytest.mark.integration


def _loss(host, theta: np.ndarray, rows: np.ndarray) -> float:
    return host.gradient(theta, rows)[1]


@pytest.mark.parametrize("strategy", ["zgr", "zo"])
def test_rounds_descend(live, strategy):
    host = live.engine.host
    layout = host.layout
    rounds, eps = 3, 1e-3
    # η is small on purpose: E[p·z] = (αI + (1−α)(n_b/m)VVᵀ)·g, so along the guidance the ZO aggregate is
    # amplified by (1−α)·n_b/m (448 here); an η tuned for plain ZO overshoots there.
    cfg = RunConfig(
        strategy=strategy,
        rounds=rounds,
        quorum=3,
        local_steps=8,
        alpha=0.5,
        lam=0.9,
        eta=0.01,
        guidance_rank=2,
        grad_batches=2,
        grad_batch_size=32,
        deadline_s=120,
    )
    live.admin().create_run(cfg)
    devs = [live.device(f"{strategy}{i}") for i in range(3)]
    parts = np.array_split(np.arange(host.n_public), 3)
    theta = theta_from_bytes(devs[0].adapter(0), layout)
    start = _loss(host, theta, np.arange(host.n_public))
    for rnd in range(rounds):
        for d, rows in zip(devs, parts, strict=True):
            info = d.current_round()
            assert info.round == rnd
            bases = {g.block: d.guidance(rnd, g.block) for g in info.guidance}
            reports, seed = [], info.seed_lo
            for step in range(info.local_steps):
                for b in info.blocks:
                    z = np.zeros(layout.total, dtype=np.float32)
                    sl = layout.blocks[b].slice
                    z[sl] = perturbation(seed, b, sl.stop - sl.start, bases.get(b), info.alpha)
                    p = (_loss(host, theta + eps * z, rows) - _loss(host, theta - eps * z, rows)) / (2 * eps)
                    reports.append(ReportIn(seed=seed, block=b, step=step, scalar=p, n_examples=len(rows)))
                    seed += 1
            d.upload_reports(rnd, reports, f"{strategy}-{rnd}-{info.seed_lo}")
        wait_round(devs[0], rnd + 1)
        grad = host.gradient(theta, np.arange(host.n_public))[0]
        new = replay(devs[0], layout, rnd, theta)
        assert float((new - theta) @ grad) < 0, (strategy, rnd)  # a descent direction
        theta = new
    end = _loss(host, theta, np.arange(host.n_public))
    if get_strategy(strategy).guided:  # zgr: the cloud's term makes every round a descent on public data
        assert end < start, (start, end)
