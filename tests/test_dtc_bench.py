"""``cooperllm bench dtc`` end to end on the tiny model: real gradients, guidance bases, the table, the targets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cooperllm_app.cli import main


def test_bench_dtc_on_tiny_model(tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path, capsys) -> None:
    save = tmp_path / "guidance.npz"
    args = [
        "bench",
        "dtc",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(sst2_dir / "dev.tsv"),
        "--batch-size",
        "4",
        "--warmup-steps",
        "2",
        "--repeats",
        "1",
        "--reports",
        "300",
        "--save",
        str(save),
        "--links",
        "10mbit:50ms",
        "--measure-link",
        "100mbit:1ms",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    data = np.load(save)
    n_blocks = int(data["n_blocks"])
    for i in range(n_blocks):  # the cloud's tensors: orthonormal bases of the gradient window
        v = data[f"V{i}"]
        assert v.shape[1] == 4
        np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-4)
    rows = {m.group(1).strip(): m for m in re.finditer(r"^(.+?)\s+(\d\.\d{6})\s+\S+\s+([\d,]+)\s+([\d.]+)", out, re.M)}
    assert {"raw float32 (baseline)", "zstd float32 (baseline)", "DTC 4-bit", "DTC 32-bit"} <= set(rows)
    adaptive = next(m for name, m in rows.items() if name.startswith("DTC adaptive") and "stoch" not in name)
    assert float(adaptive.group(2)) >= 0.999
    raw_bytes = int(rows["raw float32 (baseline)"].group(3).replace(",", ""))
    assert int(adaptive.group(3).replace(",", "")) < raw_bytes / 3
    assert "guidance download over 10mbit:50ms" in out
    ratios = [float(r) for r in re.findall(r"measured download over 100mbit:1ms: .* ratio ([\d.]+)\)", out)]
    assert len(ratios) == 2 and all(r >= 0.95 for r in ratios)  # never faster than the link allows
    per_report = float(re.search(r"= ([\d.]+) bytes/report", out).group(1))
    assert per_report <= 16
    # --load reproduces the same table from the saved tensors without a model
    assert (
        main(
            [
                "bench",
                "dtc",
                "--load",
                str(save),
                "--repeats",
                "1",
                "--reports",
                "300",
                "--links",
                "--measure-link",
                "none",
            ]
        )
        == 0
    )
    again = capsys.readouterr().out
    assert f" {adaptive.group(3)} " in again  # same frame bytes: encoding is deterministic


@pytest.mark.parametrize("bad", [["--load", "/nonexistent.npz"]])
def test_bench_dtc_bad_input_is_a_clear_error(bad: list[str], capsys) -> None:
    assert main(["bench", "dtc", *bad]) == 2
    assert "error:" in capsys.readouterr().err
