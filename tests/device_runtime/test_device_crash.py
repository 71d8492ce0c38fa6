"""Kill the device process at random points and restart it: every computed report reaches the server exactly once.

A real cloud (uvicorn on 127.0.0.1, SQLite file) behind an emulated link (:class:`cooperllm.link_proxy.LinkProxy`, so
uploads take a while and kills land between a send and its acknowledgement too), and the device client as a
separate process (``python -m device_runtime run``) on the tiny model, SIGKILLed at seeded random moments once it has
made progress. At the end the device's outbox (every report it ever computed) and the server's report table must
hold the same reports, each once, and the device's θ must be the server's final θ.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from live_cloud import ADMIN, ENROL, small_run, start_server
from sqlalchemy import select

from cloud_api import db as cloud_db
from cooperllm.api_client import CooperClient
from cooperllm.layout import theta_checksum
from cooperllm.link_proxy import LinkProxy
from device_runtime.outbox import OUTBOX_FILE
from device_runtime.state import load_state

ROUNDS, LOCAL_STEPS, KILLS = 4, 4, 6


def _progress(state_dir: Path) -> tuple[int, int]:
    """(reports computed, reports acknowledged) as the outbox says; (0, 0) before it exists."""
    path = state_dir / OUTBOX_FILE
    if not path.is_file():
        return 0, 0
    try:
        with sqlite3.connect(str(path), timeout=5) as db:
            n, acked = db.execute("SELECT COUNT(*), COALESCE(SUM(state = 'acked'), 0) FROM reports").fetchone()
        return int(n), int(acked)
    except sqlite3.Error:  # created but not initialised yet
        return 0, 0


def _device(args: list[str], log) -> subprocess.Popen:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "device_runtime", "--log-level", "WARNING", "run", *args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def test_killed_device_delivers_every_report_exactly_once(tmp_path, tiny_model_dir, tiny_artifacts, toy_tsv):
    server = start_server(tmp_path / "cloud", tiny_model_dir, toy_tsv, artifacts=tiny_artifacts, public_n=8, seq_len=32)
    port = int(server.url.rsplit(":", 1)[1])
    proxy = LinkProxy("20mbit:15ms", target=("127.0.0.1", port)).start()
    try:
        with CooperClient(server.url, ADMIN) as admin:
            run = admin.create_run(small_run(rounds=ROUNDS, local_steps=LOCAL_STEPS, deadline_s=600))
        state = tmp_path / "device"
        args = [
            "--artifacts",
            str(tiny_artifacts),
            "--backend",
            "onnx",
            "--data",
            str(toy_tsv),
            "--cloud",
            proxy.url,
            "--enrol-key",
            ENROL,
            "--state",
            str(state),
            "--poll",
            "0.05",
            "--no-progress",
        ]
        rng = random.Random(7)
        kills = 0
        with open(tmp_path / "device.log", "w") as log:
            for _ in range(KILLS):
                before = _progress(state)
                proc = _device(args, log)
                deadline = time.monotonic() + 120
                while proc.poll() is None and _progress(state) == before and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.3))  # a random point after it got going
                if proc.poll() is not None:
                    break  # it finished the run before this kill
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                kills += 1
            final = _device(args, log)
            assert final.wait(180) == 0, (tmp_path / "device.log").read_text()[-3000:]
        assert kills >= 3, f"only {kills} kills landed before the run ended"

        engine = server.engine
        with sqlite3.connect(str(state / OUTBOX_FILE)) as db:
            outbox = db.execute("SELECT round, seed, block, step, scalar, state FROM reports").fetchall()
        assert {row[-1] for row in outbox} == {"acked"}
        computed = sorted(row[:5] for row in outbox)
        device_id = load_state(state, engine.host.layout).extra["device_id"]
        r = cloud_db.reports.c
        with engine.db.connect() as conn:
            rows = conn.execute(
                select(r.round, r.seed, r.block, r.step, r.scalar).where(
                    r.run_id == run.run_id, r.device_id == device_id
                )
            ).all()
        on_server = sorted(tuple(x) for x in rows)
        # a zgr step measures two directions (the guidance subspace, then its complement): two reports per block
        per_round = LOCAL_STEPS * len(engine.host.layout.blocks) * 2
        assert len(computed) == ROUNDS * per_round  # every planned measurement computed, once
        assert on_server == computed  # every computed report on the server, exactly once, with its exact scalar
        with CooperClient(server.url, ADMIN) as admin:
            assert [x.n_reports for x in admin.rounds(run.run_id)] == [per_round] * ROUNDS
            assert admin.run(run.run_id).status == "finished"
            final_theta = admin.run(run.run_id).theta_checksum
        assert theta_checksum(load_state(state, engine.host.layout).theta) == final_theta
    finally:
        proxy.stop()
        server.stop()
