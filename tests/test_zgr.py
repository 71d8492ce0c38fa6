import json

import numpy as np
import pytest

from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.perturb import Direction, direction
from cooperllm.spec.golden import GOLDEN_PATH, f32_from_hex
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance, BlockUpdate, Report, apply_update

ZGR = (Direction.SUBSPACE, Direction.COMPLEMENT)


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


def test_apply_update_matches_dense_formula():
    """Complement reports move θ by q·p·u_⊥, subspace reports not at all, w by V·w; blocks without an update stay."""
    layout = _layout()
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(layout.total).astype(np.float32)
    bases = {b: np.linalg.qr(rng.standard_normal((n, 2)))[0].astype(np.float32) for b, n in ((0, 10), (1, 5))}
    guidance = {b: BlockGuidance(v, np.zeros(2, np.float32)) for b, v in bases.items()}
    reports = [Report(1, 0, 0, 0.5, 4), Report(2, 0, 1, -2.0, 4), Report(3, ALL_BLOCKS, 3, 1.0, 4)]
    update = {0: BlockUpdate(q=-0.1), 1: BlockUpdate(q=-0.2, w=np.array([0.3, -0.7], np.float32))}
    expected = theta.astype(np.float64).copy()
    comp = Direction.COMPLEMENT
    expected[:10] += -0.1 * (-2.0 * direction(2, 0, 10, comp, bases[0]) + 1.0 * direction(3, 0, 10, comp, bases[0]))
    expected[10:] += -0.2 * 1.0 * direction(3, 1, 5, comp, bases[1]) + bases[1] @ np.array([0.3, -0.7])
    apply_update(theta, layout, reports, ZGR, guidance, update)
    assert np.allclose(theta, expected, atol=1e-6)


@pytest.mark.parametrize("case", [0, 1, 2], ids=["zgr", "zo", "cloud"])
def test_replay_golden_is_bit_exact(case):
    g = json.loads(GOLDEN_PATH.read_text())["replays"][case]
    layout = ParamLayout.from_dict(g["layout"])
    theta = f32_from_hex(g["theta0"])
    guidance = {
        int(b): BlockGuidance(
            f32_from_hex(v["basis_row_major"]).reshape(v["rows"], v["cols"]), f32_from_hex(v["coeffs"])
        )
        for b, v in g["guidance"].items()
    }
    update = {u["block"]: BlockUpdate(u["q"], None if u["w"] is None else f32_from_hex(u["w"])) for u in g["update"]}
    directions = [Direction[d.upper()] for d in g["directions"]]
    apply_update(theta, layout, [Report(**r) for r in g["reports"]], directions, guidance, update)
    assert np.array_equal(theta.view(np.uint32), f32_from_hex(g["theta1"]).view(np.uint32))
    assert theta_checksum(theta) == g["theta1_sha256"]


def test_report_rejects_non_finite_scalar():
    with pytest.raises(ValueError):
        Report(1, 0, 0, float("nan"), 1)


def test_report_for_unknown_block_is_rejected():
    theta = np.zeros(15, dtype=np.float32)
    with pytest.raises(ValueError):
        apply_update(theta, _layout(), [Report(1, 7, 0, 1.0, 1)], (Direction.ISO,), {}, {7: BlockUpdate(q=0.1)})


def test_subspace_step_without_its_basis_is_rejected():
    theta = np.zeros(15, dtype=np.float32)
    with pytest.raises(ValueError, match="no matching guidance"):
        apply_update(theta, _layout(), [], (), {}, {1: BlockUpdate(w=np.ones(2, np.float32))})


def test_block_update_rejects_non_finite_numbers():
    with pytest.raises(ValueError):
        BlockUpdate(q=float("inf"))
    with pytest.raises(ValueError):
        BlockUpdate(w=np.array([np.nan], np.float32))
