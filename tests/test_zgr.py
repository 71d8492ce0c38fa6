import numpy as np
import pytest

from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.perturb import perturbation
from cooperllm.spec.golden import GOLDEN_PATH, f32_from_hex
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance, Report, apply_round


def _layout() -> ParamLayout:
    return ParamLayout.build([("a", (2, 3), "layer.0"), ("b", (4,), "layer.0"), ("c", (5,), "layer.1")])


def test_layout_roundtrip_and_blocks():
    layout = _layout()
    assert [b.size for b in layout.blocks] == [10, 5]
    assert layout.total == 15
    assert ParamLayout.from_dict(layout.to_dict()).to_dict() == layout.to_dict()
    theta = np.arange(15, dtype=np.float32)
    views = layout.unflatten(theta)
    assert views["a"].shape == (2, 3) and views["c"][0] == 10
    assert np.array_equal(layout.flatten(views), theta)


def test_layout_rejects_inconsistent_dict():
    d = _layout().to_dict()
    d["tensors"][1]["offset"] = 99
    with pytest.raises(ValueError):
        ParamLayout.from_dict(d)


def test_apply_round_matches_dense_formula():
    layout = _layout()
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(layout.total).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((5, 2)))[0].astype(np.float32)
    coeffs = np.array([0.3, -0.7], dtype=np.float32)
    reports = [Report(1, 0, 0, 0.5, 4), Report(2, 1, 0, -2.0, 4), Report(3, ALL_BLOCKS, 1, 1.0, 4)]
    alpha, lam, eta = 0.5, 0.25, 0.1
    expected = theta.astype(np.float64).copy()
    g0 = (0.5 * perturbation(1, 0, 10) + 1.0 * perturbation(3, 0, 10)) / 2
    g1 = (-2.0 * perturbation(2, 1, 5, basis, alpha) + 1.0 * perturbation(3, 1, 5, basis, alpha)) / 2
    expected[:10] -= eta * (1 - lam) * g0
    expected[10:] -= eta * ((1 - lam) * g1 + lam * basis @ coeffs)
    apply_round(theta, layout, reports, {1: BlockGuidance(basis, coeffs)}, alpha, lam, eta)
    assert np.allclose(theta, expected, atol=1e-6)


def test_replay_golden_is_bit_exact():
    import json

    g = json.loads(GOLDEN_PATH.read_text())["replay"]
    layout = ParamLayout.from_dict(g["layout"])
    theta = f32_from_hex(g["theta0"])
    guidance = {
        int(b): BlockGuidance(
            f32_from_hex(v["basis_row_major"]).reshape(v["rows"], v["cols"]), f32_from_hex(v["coeffs"])
        )
        for b, v in g["guidance"].items()
    }
    reports = [Report(**r) for r in g["reports"]]
    apply_round(theta, layout, reports, guidance, g["alpha"], g["lambda"], g["eta"])
    assert np.array_equal(theta.view(np.uint32), f32_from_hex(g["theta1"]).view(np.uint32))
    assert theta_checksum(theta) == g["theta1_sha256"]


def test_report_rejects_non_finite_scalar():
    with pytest.raises(ValueError):
        Report(1, 0, 0, float("nan"), 1)


def test_report_for_unknown_block_is_rejected():
    theta = np.zeros(15, dtype=np.float32)
    with pytest.raises(ValueError):
        apply_round(theta, _layout(), [Report(1, 7, 0, 1.0, 1)], {}, 1.0, 0.0, 0.1)
