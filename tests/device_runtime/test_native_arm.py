"""ARM correctness: the native runner cross-built for aarch64 runs x86-exported tiny .pte files under qemu-user and
gives the x86 loss within 1e-5 (fp32 XNNPACK, int8 weight-only on portable kernels and on XNNPACK f32-qc8w, and the
4-bit graph: packed nibbles unpacked with float ops in the graph, the matmuls in XNNPACK — the ops gguf-q4 runs).

Needs ``g++-aarch64-linux-gnu``, ``qemu-user-static`` and the unpacked aarch64 executorch wheel
(``python -m device_runtime.native.build --fetch-aarch64-wheel``); skips with the reason when one is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_native import export_tiny_ptes, random_inputs

from device_runtime.native.binding import NativeRunner
from device_runtime.native.build import NativeBuildError, build, default_root

pytestmark = pytest.mark.integration

ARM_COMBOS = (("xnnpack", "none"), ("portable", "int8"), ("xnnpack-qc8w", "int8"), ("xnnpack", "int4"))
QEMU = "qemu-aarch64-static"
SYSROOT = Path("/usr/aarch64-linux-gnu")
# qemu with the cross toolchain's sysroot, its libraries first: with arm64 packages installed as a foreign architecture
# (the aarch64 JVM of tests/test_android_core.py), the loader otherwise finds the host's /lib/aarch64-linux-gnu libc
# before the sysroot's, mixes two builds of glibc under the sysroot's ld.so, and the runner hangs.
QEMU_SYSROOT = [QEMU, "-L", str(SYSROOT), "-E", f"LD_LIBRARY_PATH={SYSROOT / 'lib'}"]


@pytest.fixture(scope="module")
def arm_runner() -> Path:
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64 cross compiler missing: apt-get install -y g++-aarch64-linux-gnu")
    if shutil.which(QEMU) is None:
        pytest.skip("qemu-aarch64-static missing: apt-get install -y qemu-user-static")
    try:
        default_root("aarch64")
    except NativeBuildError as exc:
        pytest.skip(str(exc))
    return build("aarch64").executable


@pytest.fixture(scope="module")
def arm_ptes(tiny_model_dir, tmp_path_factory):
    from exporters.lower import PTE_BACKENDS

    combos = tuple(c for c in ARM_COMBOS if c[0] in PTE_BACKENDS)
    return export_tiny_ptes(tiny_model_dir, tmp_path_factory.mktemp("arm-ptes"), combos)


@pytest.mark.parametrize("combo", ARM_COMBOS, ids=lambda c: "-".join(c))
def test_aarch64_loss_matches_x86(arm_runner, arm_ptes, combo, tmp_path):
    if combo not in arm_ptes:
        pytest.skip(f"this exporter has no {combo[0]} backend")
    path = arm_ptes[combo]
    x86 = NativeRunner(path)
    for seed in (0, 1):
        inputs = random_inputs(x86.input_specs, seed)
        blob = tmp_path / f"inputs-{seed}.bin"
        blob.write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in inputs))
        out = subprocess.run(
            [*QEMU_SYSROOT, str(arm_runner), str(path), str(blob)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        arm = json.loads(out.stdout.strip().splitlines()[-1])
        loss, logits = x86(inputs)
        assert abs(arm["loss"] - loss) <= 1e-5, (combo, arm["loss"], loss)
        assert np.abs(np.asarray(arm["logits"]) - logits.ravel()).max() <= 1e-4
