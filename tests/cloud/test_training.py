"""End to end with real two-point ZO estimates: devices measure L(θ ± εu) with the eager tiny model along the
directions the round names (zgr: inside the downloaded guidance subspace, then in its complement; zo: plain
Rademacher), the server aggregates; every round's update is a descent direction (negative inner product with the
true gradient) and, with the cloud's rectification, the loss goes down."""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.perturb import Direction, direction
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
    # both steps are normalised (cooperllm.rectify): zgr moves each block by η·√m along the guidance per round, the
    # ZO part (zo's whole step, zgr's complement step) each coordinate by about η_zo/√N_b
    cfg = RunConfig(
        strategy=strategy,
        rounds=rounds,
        quorum=3,
        local_steps=8,
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
            kinds = [Direction[k.upper()] for k in info.directions]
            assert kinds == list(get_strategy(strategy).directions)
            reports, seed = [], info.seed_lo
            for t in range(info.local_steps):
                for b in info.blocks:
                    for j, kind in enumerate(kinds):  # measurement t·D + j along directions[j], same batch
                        u = np.zeros(layout.total, dtype=np.float32)
                        sl = layout.blocks[b].slice
                        u[sl] = direction(seed, b, sl.stop - sl.start, kind, bases.get(b))
                        p = (_loss(host, theta + eps * u, rows) - _loss(host, theta - eps * u, rows)) / (2 * eps)
                        step = t * len(kinds) + j
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
