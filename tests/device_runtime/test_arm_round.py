"""Real federated rounds with an aarch64 device: the cloud on x86 (uvicorn, tiny Llama, SQLite), one device client on
this machine's Python and one on an aarch64 Python under qemu-user (.ci/arm-root: Debian's python3.11 for arm64 with
aarch64 wheels of numpy, pydantic-core, zstandard and tokenizers) running the graph on the cross-built aarch64 native
ExecuTorch runner, and a third, the Android app's Java core (FederatedDevice, through
android_demo/core/src/test/.../DeviceMain.java) on an aarch64 JVM under qemu-user — with a toy quadratic loss, as a
JVM has no ExecuTorch runtime, so its reports are real SPSA reports of that loss, not of the model. All three take
part in every round of one run (quorum 3); their reports are accepted, the rounds close, and each device's θ,
replayed from the published rounds, ends on the server's checksum."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from java_core import aarch64_java, build_core
from live_cloud import ADMIN, ENROL, small_run, start_server

from cooperllm.api_client import CooperClient
from cooperllm.layout import theta_checksum
from cooperllm.manifest import read_manifest
from device_runtime.native.build import build
from device_runtime.state import load_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARM_ROOT = Path(os.environ.get("COOPERLLM_ARM_ROOT", REPO / "build" / "arm64-python"))
ROUNDS = 2


def arm_python() -> list[str]:
    """The aarch64 interpreter as a command (qemu-user with the extracted sysroot as its library prefix)."""
    python = ARM_ROOT / "sysroot" / "usr" / "bin" / "python3.11"
    if not python.is_file() or not (ARM_ROOT / "site" / ".complete").is_file():
        pytest.skip(f"no aarch64 Python at {ARM_ROOT}: `make arm-root` (part of `make integration-deps`)")
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("no qemu-aarch64-static: `make integration-deps`")
    return ["qemu-aarch64-static", "-L", str(ARM_ROOT / "sysroot"), str(python)]


def test_x86_and_aarch64_devices_take_real_rounds_to_the_servers_checksum(
    tmp_path, tiny_model_dir, tiny_artifacts, toy_tsv
):
    arm = arm_python()
    arm_java = aarch64_java()
    java_classes = build_core(tmp_path / "java")
    arm_env = dict(
        os.environ,
        PYTHONPATH=f"{ARM_ROOT / 'site'}:{REPO}",
        COOPERLLM_NATIVE_LIB=str(build("aarch64").library),  # the cross-built runner and the aarch64 wheel's libs
        TOKENIZERS_PARALLELISM="false",
    )
    host_env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    server = start_server(tmp_path / "cloud", tiny_model_dir, toy_tsv, artifacts=tiny_artifacts, public_n=8, seq_len=32)
    try:
        with CooperClient(server.url, ADMIN) as admin:
            run = admin.create_run(small_run(rounds=ROUNDS, quorum=3, min_devices=3, local_steps=1, deadline_s=900))
        args = ["-m", "device_runtime", "--log-level", "WARNING", "run", "--artifacts", str(tiny_artifacts)]
        args += ["--backend", "native", "--data", str(toy_tsv), "--cloud", server.url, "--enrol-key", ENROL]
        args += ["--poll", "0.05", "--no-progress", "--json"]
        devices = {
            "x86_64": [sys.executable, *args, "--state", str(tmp_path / "x86"), "--device-name", "x86"],
            "aarch64": [*arm, *args, "--state", str(tmp_path / "arm"), "--device-name", "arm"],
            "java-aarch64": [
                *arm_java,
                "-cp",
                f"{java_classes / 'main'}:{java_classes / 'test'}",
                "org.cooperllm.core.DeviceMain",
                server.url,
                ENROL,
                str(tmp_path / "java-state"),
                str(tiny_artifacts),
            ],
        }
        procs = {
            name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for (name, cmd), env in zip(devices.items(), (host_env, arm_env, host_env), strict=True)
        }
        summaries = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"{name} device failed:\n{err[-3000:]}"
            summaries[name] = json.loads(out.strip().splitlines()[-1])
        with CooperClient(server.url, ADMIN) as admin:
            info = admin.run(run.run_id)
            rounds = admin.rounds(run.run_id)
    finally:
        server.stop()

    assert info.status == "finished"
    assert [(s.status, s.n_devices) for s in rounds] == [("closed", 3)] * ROUNDS  # all three in every round
    layout = read_manifest(tiny_artifacts).layout
    java = summaries.pop("java-aarch64")
    assert java["os_arch"] == "aarch64" and java["rounds"] == list(range(ROUNDS)) and java["reports"] > 0
    assert java["theta_checksum"] == info.theta_checksum, "the Java core's θ is not the server's"
    assert java["replays"] >= ROUNDS - 1  # followed by replay, not by downloading θ every round
    for name, summary in summaries.items():
        assert [r["round"] for r in summary["rounds"]] == list(range(ROUNDS)), name
        assert summary["reports_acked"] == summary["reports"] > 0 and summary["reports_dropped"] == 0, name
        state = load_state(summary["state"], layout)
        assert theta_checksum(state.theta) == info.theta_checksum, f"{name}'s θ is not the server's"
    # the aarch64 process really was one: its interpreter reports the machine it runs on
    machine = subprocess.run([*arm, "-c", "import platform; print(platform.machine())"], capture_output=True, text=True)
    assert machine.stdout.strip() == "aarch64"
