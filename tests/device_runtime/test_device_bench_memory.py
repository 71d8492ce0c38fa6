"""``cooperllm bench memory`` on the tiny artifact: fresh processes, peak RSS from wait4, torch-free ZO worker."""

import json

import pytest


@pytest.mark.integration
def test_bench_memory_reports_peaks_and_reduction(run_bench):
    out = run_bench("memory", "--steps", "2", "--workers", "bp-adamw,bp-lean,mezo-eager,zo-onnx", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["worker"]: r for r in json.loads(out.stdout.splitlines()[-1])}
    assert set(rows) == {"bp-adamw", "bp-lean", "mezo-eager", "zo-onnx"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["peak_rss_mb"] > 20 and r["seconds_per_step"] > 0
    assert rows["bp-adamw"]["torch_loaded"] and not rows["zo-onnx"]["torch_loaded"]
    assert rows["zo-onnx"]["peak_rss_mb"] < rows["bp-adamw"]["peak_rss_mb"]  # no libtorch in the device process
    assert rows["zo-onnx"]["fraction_of_lean"] == pytest.approx(
        rows["zo-onnx"]["peak_rss_mb"] / rows["bp-lean"]["peak_rss_mb"], abs=1e-3
    )
    assert rows["zo-onnx"]["reduction_pct"] == pytest.approx(
        100 * (1 - rows["zo-onnx"]["peak_rss_mb"] / rows["bp-adamw"]["peak_rss_mb"]), abs=0.1
    )
