"""`cooperllm serve` listens before it announces itself: a client that connects the moment the ready line appears
(the simulation's launcher, the benchmarks' serve_process) is queued, never refused. Uvicorn itself listens only after
the lifespan (the model's load), so the port used to be bound but refusing in between; under load a benchmark's
first connection was refused (`bench cloud`, stop 31's integration run)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from .conftest import ADMIN, ENROL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_port_accepts_connections_before_the_ready_line(tmp_path, tiny_model_dir, public_tsv):
    port = _free_port()
    env = dict(os.environ, COOPERLLM_ADMIN_TOKEN=ADMIN, COOPERLLM_ENROLMENT_KEY=ENROL)
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "--log-level", "WARNING", "serve", "--env", "test"]
    cmd += ["--model", str(tiny_model_dir), "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/c.db"]
    cmd += ["--state-dir", str(tmp_path / "state"), "--public-data", str(public_tsv), "--public-n", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    ready: list[float] = []
    reader = threading.Thread(target=lambda: (proc.stdout.readline(), ready.append(time.monotonic())), daemon=True)
    reader.start()
    try:
        first_accept = None
        deadline = time.monotonic() + 120
        while first_accept is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    first_accept = time.monotonic()
            except OSError:  # not bound yet (the process is still importing)
                time.sleep(0.01)
        reader.join(timeout=120)
        assert first_accept is not None and ready, "the server neither accepted a connection nor became ready"
        assert first_accept < ready[0], "a connection was refused until after the ready line"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
