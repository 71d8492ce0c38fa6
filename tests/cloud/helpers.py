"""Test helpers: synthetic device rounds against the live server and local replay."""

from __future__ import annotations

import time

import numpy as np
from safetensors.numpy import load

from cooperllm.api_client import CooperClient
from cooperllm.layout import ParamLayout
from cooperllm.protocol import ReportIn, RoundInfo
from cooperllm.replay import replay_sync


def make_reports(info: RoundInfo, rng: np.random.Generator, offset: int = 0) -> list[ReportIn]:
    """A complete round of synthetic reports, in the device client's order: per batch t, per block, one report per
    direction the round names (step s = t·D + j measures ``info.directions[j]``), one seed each from the range."""
    out = []
    seed = info.seed_lo + offset
    d = len(info.directions)
    for t in range(info.local_steps):
        for block in info.blocks:
            for j in range(d):
                out.append(ReportIn(seed=seed, block=block, step=t * d + j, scalar=float(rng.normal()), n_examples=4))
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
    """θ_{r+1} from θ_r with the server's sync payload (reports, guidance, published update) and the guidance frames a
    device downloaded, as a device replays it (the strategy names the round's directions)."""
    sync = client.sync(round_)
    bases = {g.block: client.guidance(round_, g.block) for g in sync.guidance}
    out = theta.copy()
    replay_sync(out, layout, sync, bases)
    return out
