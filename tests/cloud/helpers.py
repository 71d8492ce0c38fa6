"""Test helpers: synthetic device rounds against the live server and local replay."""

from __future__ import annotations

import time

import numpy as np
from safetensors.numpy import load

from cooperllm.api_client import CooperClient
from cooperllm.layout import ParamLayout
from cooperllm.protocol import ReportIn, RoundInfo, sync_guidance, sync_reports
from cooperllm.zgr import apply_round


def make_reports(info: RoundInfo, rng: np.random.Generator, offset: int = 0) -> list[ReportIn]:
    out = []
    seed = info.seed_lo + offset
    for step in range(info.local_steps):
        for block in info.blocks:
            out.append(ReportIn(seed=seed, block=block, step=step, scalar=float(rng.normal()), n_examples=4))
            seed += 1
    return out


def wait_round(client: CooperClient, round_: int, timeout: float = 60.0) -> RoundInfo:
    deadline = time.time() + timeout
    while True:
        info = client.current_round()
        if info.round >= round_ or info.status in ("failed", "finished"):
            return info
        if time.time() > deadline:
            raise TimeoutError(f"round {round_} did not open (at {info.round}, {info.status})")
        time.sleep(0.02)


def theta_from_bytes(data: bytes, layout: ParamLayout) -> np.ndarray:
    return layout.flatten(load(data))


def replay(client: CooperClient, layout: ParamLayout, round_: int, theta: np.ndarray) -> np.ndarray:
    """θ_{r+1} from θ_r with the server's sync payload and the guidance frames a device downloaded."""
    sync = client.sync(round_)
    bases = {g.block: client.guidance(round_, g.block) for g in sync.guidance}
    out = theta.copy()
    apply_round(out, layout, sync_reports(sync), sync_guidance(sync, bases), sync.alpha, sync.lam, sync.eta)
    return out
