"""Adapter deltas against a real cloud (uvicorn on 127.0.0.1, the tiny model): a device that missed rounds gets θ as
a lossless delta from the θ it holds, and falls back to the full adapter whenever the delta cannot be had."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
from live_cloud import ENROL, small_run, start_server
from safetensors.numpy import load

from cooperllm import theta_delta
from cooperllm.api_client import ApiError, CooperClient
from cooperllm.layout import theta_checksum
from cooperllm.protocol import ERRORS
from device_runtime.client import ClientConfig, DeviceClient
from device_runtime.session import open_session
from device_runtime.state import load_state


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir, tiny_artifacts, toy_tsv):
    server = start_server(
        tmp_path_factory.mktemp("delta-cloud"),
        tiny_model_dir,
        toy_tsv,
        artifacts=tiny_artifacts,
        public_n=8,
        seq_len=32,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def session(tiny_artifacts):
    return open_session(tiny_artifacts, "onnx")


def _cfg(name: str, **kw) -> ClientConfig:
    return ClientConfig(ENROL, device_name=name, poll_s=0.02, progress=False, max_rounds=1, **kw)


def _wait_for_round(api: CooperClient, round_: int) -> None:
    for _ in range(60):
        if api.current_round(after=round_ - 1, wait_s=5).round >= round_:
            return
    raise AssertionError(f"the run did not reach round {round_}")


def _play(live, session, corpus, folder):
    """One device process taking part in one round (the next it finds open), its state kept in ``folder``."""
    with CooperClient(live.url) as api, DeviceClient(session, api, corpus, folder, _cfg(folder.name)) as client:
        return client.run()


def _down(api: CooperClient, fn, *args) -> tuple[bytes, int]:
    before = api.wire.snapshot()[1]
    data = fn(*args)
    return data, api.wire.snapshot()[1] - before


def test_a_device_that_missed_a_round_gets_theta_by_delta_and_falls_back_when_it_cannot(
    live, session, toy_corpus, tmp_path, caplog
):
    layout = session.manifest.layout
    with live.admin() as admin:
        run = admin.create_run(small_run(rounds=3))
    watch = live.device("watch")
    assert [r["round"] for r in _play(live, session, toy_corpus, tmp_path / "a").rounds] == [0]  # a: away in round 1
    _wait_for_round(watch, 1)
    stats_b = _play(live, session, toy_corpus, tmp_path / "b")  # b: new, so round 1's θ comes in full
    assert [r["round"] for r in stats_b.rounds] == [1] and (stats_b.downloads, stats_b.delta_downloads) == (1, 0)
    _wait_for_round(watch, 2)
    stats_a = _play(live, session, toy_corpus, tmp_path / "a")  # a is back: θ_2 from the θ_0 it holds
    assert [r["round"] for r in stats_a.rounds] == [2]
    assert (stats_a.delta_downloads, stats_a.downloads, stats_a.replays) == (1, 0, 0)

    # the θ it trained round 2 on is the server's θ_2 bit for bit, for fewer bytes than the full adapter
    full, full_bytes = _down(watch, watch.adapter, 2)
    theta_2 = layout.flatten(load(full))
    state = load_state(tmp_path / "a", layout)
    assert state.round_id == 2 and theta_checksum(state.round_base) == theta_checksum(theta_2)
    frame, delta_bytes = _down(watch, watch.adapter_delta, 0, 2)
    theta_0 = layout.flatten(load(watch.adapter(0)))
    assert np.array_equal(theta_delta.decode(frame, theta_0, from_version=0, to_version=2), theta_2)
    assert delta_bytes < full_bytes, (delta_bytes, full_bytes)
    assert delta_bytes < 0.9 * full_bytes, (delta_bytes, full_bytes)

    # the endpoint's refusals: unknown versions 404, a backwards range or a non-integer 422, no token 401
    for args, status, detail in [
        ((0, 99), 404, ERRORS["unknown_version"]),
        ((2, 1), 422, ERRORS["bad_version_range"]),
        (("x", 1), 422, None),
    ]:
        with pytest.raises(ApiError) as err:
            watch.adapter_delta(*args)
        assert err.value.status_code == status
        assert detail is None or err.value.detail == detail
    assert httpx.get(f"{live.url}/v1/adapter/delta", params={"from": 0, "to": 1}).status_code == 401

    # fallbacks, each to the full download: θ held drifted (frame refused), deltas turned off, `from` unknown (404)
    checksum_3 = theta_checksum(layout.flatten(load(watch.adapter(3))))
    with CooperClient(live.url) as api, DeviceClient(session, api, toy_corpus, tmp_path / "a", _cfg("a")) as a:
        a.enrol()  # the token kept in its state

        def fetched() -> tuple[int, int]:
            return a.sync.counts.downloads, a.sync.counts.delta_downloads

        assert a.sync.held_theta(3, run.run_id)[0] == 2 and a.sync.held_theta(3, run.run_id + 1) is None
        held = a.state.round_base.copy()
        a.state.round_base[0] += 1.0
        with caplog.at_level(logging.INFO, logger="device_runtime.theta_sync"):
            assert theta_checksum(a.sync.download(3, checksum_3, run.run_id)) == checksum_3
        assert "base θ is not θ of version 2" in caplog.text and fetched() == (1, 0)
        a.state.round_base[...] = held
        assert theta_checksum(a.sync.download(3, checksum_3, run.run_id)) == checksum_3  # the delta again
        assert fetched() == (1, 1)
        a.sync.delta_downloads = False
        assert theta_checksum(a.sync.download(3, checksum_3, run.run_id)) == checksum_3
        assert fetched() == (2, 1)
        a.sync.delta_downloads = True
        live.engine.ctx.adapter_path(run.run_id, 2).unlink()  # the server no longer has θ_2
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="device_runtime.theta_sync"):
            assert theta_checksum(a.sync.download(3, checksum_3, run.run_id)) == checksum_3
        assert ERRORS["unknown_version"] in caplog.text and fetched() == (3, 1)
    watch.close()
