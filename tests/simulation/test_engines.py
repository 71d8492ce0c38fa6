"""The simulation's engines (docs/SIMULATION.md): the process pool and Ray actors run the same devices, so one seed
gives the same θ every round whichever runs them; the round lines carry the figures a run at scale is watched by."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cooperllm_app.simulation import ray_engine
from cooperllm_app.simulation.config import SimConfig
from cooperllm_app.simulation.launcher import SimulationError
from cooperllm_app.simulation.metrics import read_lines, stragglers
from cooperllm_app.simulation.runner import simulate

RAY = str(Path(sys.executable).with_name("ray"))
# what the engine sets for its own Ray (cooperllm_app.simulation.ray_engine); the test's cluster is started alike
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def _options(tiny_artifacts: Path, tiny_model_dir: Path, **kw) -> dict:
    return (
        dict(
            artifacts=str(tiny_artifacts),
            model=str(tiny_model_dir),
            clients=8,
            per_round=4,
            rounds=3,
            local_steps=2,
            eval_limit=16,
            final_eval_limit=16,
            public_n=64,
            link="100mbit:2ms",
            workers=2,
        )
        | kw
    )


def _checksums(run_dir: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(run_dir / "cloud" / "cooperllm.db") as db:
        return db.execute("SELECT round, theta_checksum_after FROM rounds ORDER BY round").fetchall()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster started as a user starts one (``ray start --head``), advertised on 127.0.0.1 (Ray
    resolves the address for its listeners itself: docs/SIMULATION.md), stopped afterwards. Its session folder is a
    short one of its own (Ray's sockets live there, and a socket's path has at most 107 bytes)."""
    port, temp = _free_port(), tempfile.mkdtemp(prefix="ray-")
    start = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    start += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        done = subprocess.run(start, env=RAY_ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_process_pool_and_ray_cluster_give_the_same_theta_every_round(
    tmp_path, tiny_artifacts, tiny_model_dir, ray_cluster
):
    opts = _options(tiny_artifacts, tiny_model_dir)
    simulate(SimConfig(**opts), tmp_path / "process", progress=False)
    simulate(SimConfig(**opts, engine="ray", ray_address=ray_cluster), tmp_path / "ray", progress=False)
    pool, ray = _checksums(tmp_path / "process"), _checksums(tmp_path / "ray")
    assert [r for r, _ in pool] == [0, 1, 2]
    assert ray == pool
    assert len({c for _, c in pool}) == 3  # θ moved every round: equal checksums are not three unchanged θ
    # the Ray actors ran the devices: their logs are in the run folder, the process engine's are not
    logs = {p.name for p in (tmp_path / "ray" / "logs").iterdir()}
    assert {"ray-device-worker-0.log", "ray-device-worker-1.log"} <= logs and "device-worker-0.log" not in logs
    for line in [m for m in read_lines(tmp_path / "ray" / "metrics.jsonl") if m["kind"] == "round"]:
        assert line["devices_done"] == len(line["devices"]) == 4
        assert line["device_steps_per_s"] > 0 and isinstance(line["stragglers"], list)
        assert all(line["host_peak_rss_mb"][k] > 0 for k in ("cloud", "evaluator", "simulation"))


def test_a_ray_worker_that_cannot_be_placed_is_a_clear_error(tmp_path, tiny_artifacts, tiny_model_dir, monkeypatch):
    """A device worker asking for more memory than the (local) instance has is never placed: the simulation stops
    with what it waited for, not a hang."""
    monkeypatch.setattr(ray_engine, "READY_TIMEOUT_S", 20.0)
    cfg = SimConfig(**_options(tiny_artifacts, tiny_model_dir, rounds=1), engine="ray", ray_memory_mb=10**6)
    with pytest.raises(SimulationError, match="did not start .* CPUs and memory"):
        simulate(cfg, tmp_path / "run", progress=False)


def test_ray_options_need_the_ray_engine(tiny_artifacts, tiny_model_dir):
    with pytest.raises(ValueError, match="options of --engine ray"):
        SimConfig(**_options(tiny_artifacts, tiny_model_dir), ray_address="127.0.0.1:6379").resolved()
    with pytest.raises(ValueError, match="engine must be one of process, ray"):
        SimConfig(**_options(tiny_artifacts, tiny_model_dir), engine="dask").resolved()
    with pytest.raises(ValueError, match="an address the devices can connect to"):
        SimConfig(**_options(tiny_artifacts, tiny_model_dir), cloud_host="0.0.0.0").resolved()
    with pytest.raises(ValueError, match="between 1 and 1e8"):
        SimConfig(**_options(tiny_artifacts, tiny_model_dir), engine="ray", ray_memory_mb=10**9).resolved()


def test_stragglers_are_the_devices_slower_than_twice_the_median():
    assert stragglers({}) == []
    assert stragglers({1: 1.0, 2: 1.1, 3: 0.9, 4: 2.5, 5: 2.1}) == [4]
    assert stragglers({7: 3.0}) == []


@pytest.mark.integration
def test_bench_simulation_measures_both_engines_at_two_population_sizes(tmp_path, tiny_artifacts, tiny_model_dir):
    """``cooperllm bench simulation`` end to end at a small size (the local Ray instance it starts, both engines,
    two N): every arm's figures and the ratios are there, and the engines agree on θ."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "bench", "simulation", "--artifacts", str(tiny_artifacts)]
    cmd += ["--model", str(tiny_model_dir), "--clients", "8", "16", "--per-round", "4", "--rounds", "2"]
    cmd += ["--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "device-steps/s, ray / process at N=16" in done.stdout
    result = json.loads((out / "results.json").read_text())
    for engine in ("process", "ray"):
        assert sorted(result["arms"][engine]) == ["16", "8"]
        assert all(a["device_steps_per_s"] > 0 for a in result["arms"][engine].values())
        assert all(v > 0 for v in result["peak_ratio_largest_vs_smallest_n"][engine].values())
    assert _checksums(out / "ray-n16") == _checksums(out / "process-n16")
