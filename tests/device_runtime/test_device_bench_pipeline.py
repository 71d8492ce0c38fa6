"""``cooperllm bench pipeline`` end to end on the tiny artifact: a real cloud process, four client runs per link."""

import json

import pytest


@pytest.mark.integration
def test_bench_pipeline_measures_every_mode(run_bench):
    out = run_bench("pipeline", "--links", "20mbit:10ms", "--rounds", "3", "--local-steps", "2", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    (row,) = result["links"]
    assert row["link"] == "20mbit:10ms" and row["local_steps"] == 2
    for mode in ("compute", "transfer", "sequential", "spc"):
        assert row[mode]["round_s"] > 0 and row[mode]["bytes_down"] > 0
    assert row["spc_vs_max"] == pytest.approx(
        row["spc"]["round_s"] / max(row["compute"]["round_s"], row["transfer"]["round_s"])
    )
