"""A real cloud for tests: uvicorn on 127.0.0.1 (ephemeral port) around the tiny model, started in a thread.

Shared by the cloud, device-client and Android-core tests (``tests/`` is on ``sys.path`` through its conftest), with
the small run they start on it.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cloud_api.round_state import ensure_seed_key
from cloud_api.settings import Settings
from cooperllm.api_client import CooperClient
from cooperllm.protocol import RunConfig

ADMIN = "test-admin-token-0123456789"
ENROL = "test-enrolment-key-0123456789"
# Every test server keys its seed ranges with this, so a test draws the same seeds (and directions) on every run: a
# statistical assertion is checked on one fixed draw instead of a fresh random one each time.
TEST_SEED_KEY = bytes(range(32))


@dataclass
class LiveServer:
    url: str
    settings: object
    app: object
    server: object
    thread: threading.Thread

    def admin(self) -> CooperClient:
        return CooperClient(self.url, ADMIN)

    def device(self, name: str = "dev") -> CooperClient:
        c = CooperClient(self.url)
        c.enroll(ENROL, name)
        return c

    @property
    def engine(self):
        return self.app.state.cooper.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(tmp: Path, model_dir: Path, public_data: Path, **overrides) -> LiveServer:
    """Settings for the tiny model, ``overrides`` on top. No rate limit unless a test sets one (the 429 test does)."""
    import uvicorn  # the server stack (uvicorn, FastAPI) only where a test starts one

    from cloud_api.app import create_app, server_options

    values = dict(
        env="test",
        admin_token=ADMIN,
        enrolment_key=ENROL,
        database_url=f"sqlite:///{tmp}/cloud.db",
        state_dir=tmp,
        model=str(model_dir),
        public_data=public_data,
        public_n=64,
        seq_len=24,
        tick_s=0.02,
        rate_burst=1000,
        rate_limit_per_s=1000.0,
    )
    values.update(overrides)
    settings = Settings(**values)
    ensure_seed_key(settings.state_dir, TEST_SEED_KEY)
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **server_options(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", settings, app, server, thread)


def small_run(**overrides) -> RunConfig:
    """A zgr run the tiny model finishes in seconds on loopback: 3 rounds of 2 local steps, one device is a quorum,
    rank-2 guidance from one 4-example cloud batch; ``overrides`` on top."""
    values = dict(
        strategy="zgr",
        rounds=3,
        quorum=1,
        min_devices=1,
        local_steps=2,
        lam=0.3,
        eta=0.05,
        guidance_rank=2,
        window=4,
        grad_batches=1,
        grad_batch_size=4,
        deadline_s=60,
    )
    values.update(overrides)
    return RunConfig(**values)
