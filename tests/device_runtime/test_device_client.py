"""The device client against a real cloud (uvicorn on 127.0.0.1, SQLite file): rounds, replay sync, durable reports."""

from __future__ import annotations

import socket
import sqlite3
import time

import httpx
import numpy as np
import pytest
from live_cloud import ADMIN, ENROL, small_run, start_server

from cooperllm.api_client import CooperClient
from cooperllm.checkpoint import load_theta
from cooperllm.layout import theta_checksum
from device_runtime.client import ClientConfig, ClientError, DeviceClient
from device_runtime.outbox import Outbox
from device_runtime.session import open_session
from device_runtime.state import load_state
from device_runtime.transfer import Backoff, CloudUnavailableError, Transfers


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, tiny_model_dir, tiny_artifacts, toy_tsv):
    dir_ = tmp_path_factory.mktemp("device-cloud")
    server = start_server(dir_, tiny_model_dir, toy_tsv, artifacts=tiny_artifacts, public_n=8, seq_len=32)
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def session(tiny_artifacts):
    return open_session(tiny_artifacts, "onnx")


def _fast() -> Transfers:
    return Transfers(Backoff(initial_s=0.01, max_s=0.05, give_up_after_s=0.5))


@pytest.mark.parametrize("pipeline", [True, False], ids=["spc", "sequential"])
def test_device_follows_a_zgr_run_and_ends_on_the_servers_model(cloud, session, toy_corpus, tmp_path, pipeline):
    with CooperClient(cloud, ADMIN) as admin:
        run = admin.create_run(small_run())
    cfg = ClientConfig(ENROL, poll_s=0.02, progress=False, pipeline=pipeline)
    with CooperClient(cloud) as api:
        with DeviceClient(session, api, toy_corpus, tmp_path / "dev", cfg) as client:
            stats = client.run()
            assert client.store._mem  # the last round's decoded guidance, kept for its replay
        final = load_theta_bytes(api.adapter(), session)
    # closed: the outbox's connection and the decoded guidance are released, the durable state is not
    with pytest.raises(sqlite3.ProgrammingError):
        client.outbox.counts()
    assert client.store._mem == {}
    n_blocks = len(session.manifest.layout.blocks)
    # per round: 2 local steps × every block × 2 measurements (the guidance subspace, then its complement)
    per_round = 2 * n_blocks * 2
    assert [r["round"] for r in stats.rounds] == [0, 1, 2]
    assert all(r["reports"] == per_round for r in stats.rounds)
    assert stats.downloads == 0 and stats.replays == 3  # rounds 1 and 2 and the final model, all by replay
    assert Outbox(tmp_path / "dev").counts() == {"acked": 3 * per_round} == {"acked": stats.reports_acked}
    assert stats.guidance_downloads == 3 * n_blocks and stats.guidance_kept == 0  # a new version every round
    assert stats.bytes_up > 0 and stats.bytes_down > 0
    assert sum(r["bytes_up"] for r in stats.rounds) <= stats.bytes_up
    state = load_state(tmp_path / "dev", session.manifest.layout)
    assert state.pending == []
    assert theta_checksum(state.theta) == theta_checksum(final)  # the replayed θ is the server's, bit for bit
    assert not np.array_equal(
        final, load_theta(session.backend.folder / "adapter_init.safetensors", session.manifest.layout)
    )
    with CooperClient(cloud, ADMIN) as admin:
        rounds = admin.rounds(run.run_id)
    assert [r.n_reports for r in rounds] == [per_round] * 3
    # the server read half of them as subspace measurements: 2 per block and round (one per local step)
    assert all(st["n"] == 2 for r in rounds for st in r.rectifier["blocks"].values())
    assert all(sorted(r.rectifier["blocks"]) == [str(b) for b in range(n_blocks)] for r in rounds)


def test_kept_guidance_versions_are_not_downloaded_again(cloud, session, toy_corpus, tmp_path):
    """Send only what changed: with τ = 1 every block keeps round 0's version (of full rank from the start: two
    gradients for rank 2); the device downloads each block once and its replays (with its own decoded copies) still
    land on the server's θ bit for bit."""
    with CooperClient(cloud, ADMIN) as admin:
        admin.create_run(small_run(guidance_tau=1.0, grad_batches=2))
    with CooperClient(cloud) as api:
        client = DeviceClient(
            session, api, toy_corpus, tmp_path / "dev", ClientConfig(ENROL, poll_s=0.02, progress=False)
        )
        stats = client.run()
        final = load_theta_bytes(api.adapter(), session)
    n_blocks = len(session.manifest.layout.blocks)
    assert stats.guidance_downloads == n_blocks and stats.guidance_kept == 2 * n_blocks
    assert stats.downloads == 0 and stats.replays == 3
    state = load_state(tmp_path / "dev", session.manifest.layout)
    assert theta_checksum(state.theta) == theta_checksum(final)


def test_fetcher_downloads_the_next_rounds_guidance_ahead_and_keeps_it_on_disk(cloud, session, tmp_path):
    from device_runtime.prefetch import GuidanceFetcher, GuidanceStore, Want

    layout = session.manifest.layout
    with CooperClient(cloud, ADMIN) as admin:
        admin.create_run(small_run())
    with CooperClient(cloud) as api:
        api.enroll(ENROL, "prefetch")
        store = GuidanceStore(tmp_path / "g", layout)
        fetcher = GuidanceFetcher(api, store, _fast().backoff)
        try:
            fetcher.prefetch(1)  # polls until the rectifier publishes round 1's list, then downloads it
            for _ in range(3000):
                if fetcher.downloads == len(layout.blocks):
                    break
                time.sleep(0.01)
        finally:
            fetcher.stop()
        assert fetcher.downloads == len(layout.blocks)
        assert api.current_round().round == 0  # all of it while round 0 still runs
        refs = api.guidance_refs(1)
        again = GuidanceStore(tmp_path / "g", layout)  # a restarted app: the copies come back from disk
        for g in refs:
            assert np.array_equal(again.get(Want(1, g.block, g.sha256)), api.guidance(1, g.block))
        path = tmp_path / "g" / f"{refs[0].sha256}.frame"
        path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # a damaged copy is not used
        assert GuidanceStore(tmp_path / "g", layout).get(Want(1, refs[0].block, refs[0].sha256)) is None


class _DropUploads:
    """The real client, with report uploads failing at the network level while ``down`` is set."""

    def __init__(self, api: CooperClient):
        self.api = api
        self.down = True

    def __getattr__(self, name):
        return getattr(self.api, name)

    def upload_report_frame(self, *args, **kwargs):
        if self.down:
            raise httpx.ConnectError("network is down")
        return self.api.upload_report_frame(*args, **kwargs)


def test_reports_survive_a_dead_network_and_a_restart(cloud, session, toy_corpus, tmp_path):
    with CooperClient(cloud, ADMIN) as admin:
        run = admin.create_run(small_run(rounds=2, strategy="zo", blocks=[-1], local_steps=3))
    state_dir = tmp_path / "dev"
    with CooperClient(cloud) as real:
        flaky = _DropUploads(real)
        cfg = ClientConfig(ENROL, poll_s=0.02, progress=False, max_rounds=1)
        with pytest.raises(CloudUnavailableError):
            DeviceClient(session, flaky, toy_corpus, state_dir, cfg, _fast()).run()
        saved = load_state(state_dir, session.manifest.layout)
        assert saved.round_id == 0 and Outbox(state_dir).counts() == {"pending": 3}  # computed, unsent, on disk
        # "Restart" the app with the network back: the pending reports go first, then the device goes on.
        flaky.down = False
        restarted = DeviceClient(
            session, flaky, toy_corpus, state_dir, ClientConfig(ENROL, poll_s=0.02, progress=False)
        )
        restarted.run()
    with CooperClient(cloud, ADMIN) as admin:
        rounds = admin.rounds(run.run_id)
    assert [r.n_reports for r in rounds] == [3, 3]  # round 0's reports counted once, none lost


def test_artifact_mismatch_refuses_to_train(cloud, session, toy_corpus, tmp_path):
    with CooperClient(cloud) as api:
        client = DeviceClient(session, api, toy_corpus, tmp_path / "dev", ClientConfig(ENROL, progress=False))
        graph = session.backend.graph.file
        with pytest.raises(ClientError, match="refusing to train"):
            client.check_artifacts({graph: "0" * 64})
        client.check_artifacts(dict(session.manifest.files))  # the same files pass


def test_unreachable_cloud_gives_up_cleanly_when_told_to(session, toy_corpus, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here
    with CooperClient(f"http://127.0.0.1:{port}", timeout=0.5) as api:
        client = DeviceClient(session, api, toy_corpus, tmp_path / "dev", ClientConfig(ENROL, progress=False), _fast())
        with pytest.raises(CloudUnavailableError, match="unreachable"):
            client.run()
    assert client.transfers.retries >= 2


def load_theta_bytes(data: bytes, session) -> np.ndarray:
    from safetensors.numpy import load

    return session.manifest.layout.flatten(load(data))
