"""Guidance publication: the next round's list ahead of time, and kept versions (send only what changed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from live_cloud import small_run

from cloud_api.rectifier import subspace_distance
from cooperllm.api_client import ApiError
from cooperllm.layout import theta_checksum
from cooperllm.protocol import RunConfig

from .helpers import make_reports, replay, theta_from_bytes, wait_round


def _config(**kw) -> RunConfig:
    return small_run(**{"local_steps": 1, "grad_batches": 2, **kw})


def _refs_when_published(client, round_: int, timeout: float = 60.0):
    """Poll (bounded) until the rectifier has published the round's guidance list: a condition, not a pause."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.guidance_refs(round_)
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"guidance for round {round_} not published after {timeout} s") from exc
            time.sleep(0.02)


def _wait_for_held_polls(engine, n: int, timeout: float = 30.0) -> None:
    """Until the server holds ``n`` long polls (waiters registered with the engine), bounded: the requests are then
    known to have arrived and to be waiting, which no pause can promise."""
    deadline = time.monotonic() + timeout
    while engine.waiters.pending() != n:
        assert time.monotonic() < deadline, f"the server holds {engine.waiters.pending()} long polls, not {n}"
        time.sleep(0.005)


def test_subspace_distance():
    rng = np.random.default_rng(0)
    a = np.linalg.qr(rng.standard_normal((50, 3)))[0]
    assert subspace_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    assert subspace_distance(a, a[:, ::-1] * -1) == pytest.approx(0.0, abs=1e-7)  # same span, other basis
    b = np.linalg.qr(np.concatenate([a, rng.standard_normal((50, 3))], axis=1))[0][:, 3:]
    assert subspace_distance(a, b) == pytest.approx(1.0)  # orthogonal spans
    e0, e1 = np.eye(2)[:, :1], np.array([[np.cos(0.3)], [np.sin(0.3)]])
    assert subspace_distance(e0, e1) == pytest.approx(np.sin(0.3))  # one column: |sin| of the angle
    assert subspace_distance(a, a[:, :2]) == 1.0  # ranks differ: always a new version


def test_next_rounds_guidance_is_listed_while_the_round_runs(live):
    live.admin().create_run(_config())
    dev = live.device("prefetcher")
    info = dev.current_round()
    assert dev.guidance_refs(0) == info.guidance
    ahead = _refs_when_published(dev, 1)  # computed at θ_0 while round 0 is open
    assert [g.block for g in ahead] == [g.block for g in info.guidance]
    frames = {g.block: dev.guidance_frame(1, g.block)[0] for g in ahead}  # downloadable ahead of time
    with pytest.raises(ApiError) as exc:
        dev.guidance_refs(2)
    assert exc.value.status_code == 404
    dev.upload_reports(0, make_reports(info, np.random.default_rng(0)), "prefetch-r0")
    nxt = wait_round(dev, 1)
    assert nxt.round == 1 and nxt.guidance == ahead  # what was listed early is what the round uses
    for g in nxt.guidance:
        assert dev.guidance_frame(1, g.block)[0] == frames[g.block]


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_kept_versions_are_the_same_bytes_and_replay_bit_exactly(live, tau):
    admin = live.admin()
    admin.create_run(_config(guidance_tau=tau))
    dev = live.device(f"tau-{tau}")
    layout = live.engine.host.layout
    theta = theta_from_bytes(dev.adapter(0), layout)
    shas = []
    rng = np.random.default_rng(1)
    for rnd in range(2):
        info = dev.current_round()
        assert info.round == rnd
        shas.append({g.block: g.sha256 for g in info.guidance})
        dev.upload_reports(rnd, make_reports(info, rng), f"tau{tau}-r{rnd}")
        nxt = wait_round(dev, rnd + 1)
        theta = replay(dev, layout, rnd, theta)
        assert theta_checksum(theta) == nxt.theta_checksum  # server and device perturbed with the same bases
    final = dev.current_round()
    shas.append({g.block: g.sha256 for g in final.guidance})
    if tau == 0.0:
        assert all(shas[0][b] != shas[k][b] for k in (1, 2) for b in shas[0])  # every round a new version
    else:
        assert shas[0] == shas[1] == shas[2]  # nothing moved far enough: nothing to send again
        assert [g.guidance_id for g in final.guidance] == [f"r0b{g.block}-{g.sha256[:12]}" for g in final.guidance]
        coeffs = [dev.sync(r).guidance[0].coeffs for r in (0, 1)]
        assert coeffs[0] != coeffs[1]  # the new gradient, projected on the kept basis


def test_long_polls_answer_as_soon_as_the_round_closes(live):
    from concurrent.futures import ThreadPoolExecutor

    live.admin().create_run(_config(rounds=1))
    dev, poller, syncer = (live.device(n) for n in ("lp-dev", "lp-poller", "lp-syncer"))
    info = dev.current_round()
    assert poller.current_round(after=0, wait_s=0.2).round == 0  # nothing happened: the state after the wait
    with ThreadPoolExecutor(2) as pool:
        nxt = pool.submit(poller.current_round, after=0, wait_s=60)
        sync = pool.submit(syncer.sync, 0, wait_s=60)
        _wait_for_held_polls(live.engine, 2)
        assert not nxt.done() and not sync.done()  # held by the server while round 0 is open
        assert live.engine.state.round == 0 and live.engine.state.status == "open"
        dev.upload_reports(0, make_reports(info, np.random.default_rng(2)), "long-poll-r0")
        finished, record = nxt.result(timeout=60), sync.result(timeout=60)
    assert finished.status == "finished" and record.round == 0
    assert record.theta_checksum_after == finished.theta_checksum
    with pytest.raises(ApiError) as exc:
        dev.current_round(after=0, wait_s=61)  # bounded by the server
    assert exc.value.status_code == 422
