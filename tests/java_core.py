"""The Android demo's Java core as the tests build and run it: compiled with android_demo/core/build.sh, run on the
host's JVM or on an aarch64 JVM under qemu-user (a phone's CPU). Shared by tests/test_android_core.py (the core's own
suites) and tests/device_runtime/test_arm_round.py (the Java core as a device in real rounds)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "android_demo" / "core"


def build_core(out: Path) -> Path:
    """Compile main (Java 8 API level) and test sources into ``out``/main and ``out``/test."""
    proc = subprocess.run(
        ["bash", str(CORE / "build.sh")],
        env={"BUILD_DIR": str(out), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"javac failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def aarch64_java() -> list[str]:
    """The aarch64 JVM (Debian's openjdk-17-jre-headless:arm64, .ci/system-deps) under qemu-user, as a command.
    A child JVM a test starts goes through qemu again (-Dcooperllm.java), and the JVM forks it with vfork: its
    default spawn helper is an aarch64 binary the host kernel would be asked to execute."""
    found = sorted(glob.glob("/usr/lib/jvm/*-arm64/bin/java"))
    if not found or shutil.which("qemu-aarch64-static") is None:
        pytest.skip("no aarch64 JVM under /usr/lib/jvm (or no qemu-aarch64-static): `make integration-deps`")
    java = ["qemu-aarch64-static", found[-1]]
    return [*java, "-Djdk.lang.Process.launchMechanism=VFORK", f"-Dcooperllm.java={' '.join(java)}"]
