"""A real cloud for tests: uvicorn on 127.0.0.1 (ephemeral port) around the tiny model, started in a thread.

Shared by the cloud, device-client and Android-core tests (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cooperllm.api_client import CooperClient

ADMIN = "test-admin-token-0123456789"
ENROL = "test-enrolment-key-0123456789"


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
    import uvicorn

    from cloud_api.app import create_app
    from cloud_api.settings import Settings

    values = dict(
        env="test",
        admin_token=ADMIN,
        enrolment_key=ENROL,
        db_url=f"sqlite:///{tmp}/cloud.db",
        state_dir=tmp,
        model=str(model_dir),
        public_data=public_data,
        public_n=64,
        seq_len=24,
        tick_s=0.02,
    )
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", settings, app, server, thread)
