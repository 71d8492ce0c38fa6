"""``cooperllm bench device`` on the tiny artifacts: fresh processes per row, same batch, torch-free device rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "bench", "device", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_bench_device_rows_agree_and_stay_torch_free(tiny_artifacts):
    out = _bench(
        "--row",
        f"int8-native={tiny_artifacts}",
        "--row",
        f"int8-onnx={tiny_artifacts}@onnx",
        "--forwards",
        "2",
        "--zo-steps",
        "1",
        "--json",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout[out.stdout.index("[") :])
    assert [r["label"] for r in rows] == ["int8-native", "int8-onnx"]
    assert [r["backend"] for r in rows] == ["native", "onnx"]  # .pte defaults to the native runner
    for r in rows:
        assert r["torch_loaded"] is False
        assert r["forward_ms"] > 0 and r["zo_steps_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["file_mb"] > 0
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], abs=1e-4)  # same batch, same θ, same int8 function
    assert "fwd ×int8-native" in out.stdout and "RSS ×int8-onnx" in out.stdout


def test_bench_device_rejects_bad_rows(tiny_artifacts, tmp_path):
    bad = _bench("--row", "no-equals-sign")
    assert bad.returncode == 2 and "LABEL=DIR" in bad.stderr
    missing = _bench("--row", f"x={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    backend = _bench("--row", f"x={tiny_artifacts}@tpu")
    assert backend.returncode == 2 and "unknown backend" in backend.stderr
