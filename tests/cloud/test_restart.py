"""Durability: SIGKILL the server mid-round (and right after a quorum), restart it on the same database, and the
run ends on the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_api.round_state import ensure_seed_key
from cooperllm.api_client import ApiError, CooperClient
from cooperllm.protocol import ReportIn

from .conftest import ADMIN, ENROL, TEST_SEED_KEY
from .helpers import wait_round

pytestmark = pytest.mark.integration

RUN = {
    "strategy": "zgr",
    "rounds": 3,
    "quorum": 2,
    "local_steps": 1,
    "lam": 0.4,
    "eta": 0.05,
    "guidance_rank": 2,
    "window": 4,
    "grad_batches": 2,
    "grad_batch_size": 4,
    "deadline_s": 600,
}


class Server:
    def __init__(self, tmp: Path, model: Path, public: Path):
        self.tmp, self.model, self.public = tmp, model, public
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        env = dict(os.environ, COOPERLLM_ADMIN_TOKEN=ADMIN, COOPERLLM_ENROLMENT_KEY=ENROL)
        cmd = [
            sys.executable,
            "-m",
            "cooperllm_app.cli",
            "--log-level",
            "WARNING",
            "serve",
            "--model",
            str(self.model),
            "--port",
            "0",
            "--database-url",
            f"sqlite:///{self.tmp}/cloud.db",
            "--state-dir",
            str(self.tmp / "state"),
            "--public-data",
            str(self.public),
            "--public-n",
            "64",
            "--seq-len",
            "24",
            "--env",
            "test",
            "--create-run",
            json.dumps(RUN),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        self.url = line.split()[4].removesuffix("/v1")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _reports(info) -> list[ReportIn]:
    """The round's one local step on every block: one report per direction the round names (zgr: the subspace at
    step 0, the complement at step 1), deterministic scalars so that both runs upload the same numbers."""
    out, seed = [], info.seed_lo
    for block in info.blocks:
        for step in range(len(info.directions)):
            scalar = ((seed % 1000) - 500) / 250.0
            out.append(ReportIn(seed=seed, block=block, step=step, scalar=scalar, n_examples=4))
            seed += 1
    return out


def _upload(client: CooperClient, name: str, only_round: int | None = None) -> None:
    """Upload this device's batch for the current round; with ``only_round``, only if that is still the current
    round — read once, so a round that closes in between is not confused with the next one (a retry of round r
    must never become a first upload to round r+1)."""
    info = client.current_round()
    if only_round is not None and info.round != only_round:
        return
    client.upload_reports(info.round, _reports(info), f"{name}-r{info.round}")


def _run(tmp: Path, model: Path, public: Path, kill_points: set[tuple[int, int]]) -> str:
    """Drive 2 devices through 3 rounds; at (round, after upload i) in kill_points the server is SIGKILLed and
    restarted, and both devices retry their round's batch (same idempotency key). Both runs share one seed key:
    seed ranges are keyed by the server's secret, and the reports' scalars follow their seeds."""
    ensure_seed_key(tmp / "state", TEST_SEED_KEY)
    srv = Server(tmp, model, public)
    srv.start()
    try:
        devs = [CooperClient(srv.url) for _ in range(2)]
        tokens = [d.enroll(ENROL, f"dev{i}").token for i, d in enumerate(devs)]
        for rnd in range(3):
            for i in range(2):
                devs[i] = CooperClient(srv.url, tokens[i])
                _upload(devs[i], f"dev{i}")
                if (rnd, i) in kill_points:
                    srv.kill()
                    srv.start()
                    devs = [CooperClient(srv.url, t) for t in tokens]
                    for j in range(i + 1):  # retries from the outbox: answered as replays or as late
                        try:
                            _upload(devs[j], f"dev{j}", only_round=rnd)
                        except ApiError as err:
                            assert err.status_code == 409
            info = wait_round(devs[0], rnd + 1, timeout=120)
            assert info.round == rnd + 1
        final = CooperClient(srv.url, ADMIN).run(1)
        assert final.status == "finished" and final.current_round == 3
        return final.theta_checksum
    finally:
        srv.stop()


def test_kill_and_restart_reaches_the_same_adapter(tmp_path, tiny_model_dir, public_tsv):
    t0 = time.time()
    reference = _run(tmp_path / "a", tiny_model_dir, public_tsv, set())
    interrupted = _run(tmp_path / "b", tiny_model_dir, public_tsv, {(0, 0), (1, 1), (2, 0)})
    assert interrupted == reference
    assert time.time() - t0 < 600
