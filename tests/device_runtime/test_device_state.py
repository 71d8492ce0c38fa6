"""Device state: atomic single-file save, exact round trip, clear errors on corrupt files."""

import numpy as np
import pytest

from cooperllm.layout import ParamLayout
from cooperllm.zgr import Report
from device_runtime.state import STATE_FILE, DeviceState, StateError, load_state, save_state


def _layout():
    return ParamLayout.build([("a.lora_A", (2, 3), "layer.0"), ("score.weight", (4,), "head")])


def test_roundtrip_with_pending_reports_and_round_base(tmp_path):
    layout = _layout()
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(layout.total).astype(np.float32)
    base = rng.standard_normal(layout.total).astype(np.float32)
    pending = [Report(2**62 + 5, -1, 3, -1.25e-3, 8), Report(7, 1, 4, 3.5, 8)]
    state = DeviceState(
        theta,
        step=4,
        round_id=9,
        pending=pending,
        artifact="abc",
        fingerprint="fp",
        extra={"device_id": "d1"},
        round_base=base,
    )
    save_state(tmp_path, state, layout)
    got = load_state(tmp_path, layout)
    assert np.array_equal(got.theta, theta) and np.array_equal(got.round_base, base)
    assert got.pending == pending
    assert (got.step, got.round_id, got.artifact, got.fingerprint, got.extra) == (
        4,
        9,
        "abc",
        "fp",
        {"device_id": "d1"},
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temp file left behind


def test_missing_state_is_none_and_corrupt_state_is_refused(tmp_path):
    layout = _layout()
    assert load_state(tmp_path, layout) is None
    (tmp_path / STATE_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(StateError, match="unreadable"):
        load_state(tmp_path, layout)


def test_state_of_another_layout_is_refused(tmp_path):
    save_state(tmp_path, DeviceState(np.zeros(10, np.float32)), _layout())
    other = ParamLayout.build([("x", (3,), "layer.0")])
    with pytest.raises(StateError):
        load_state(tmp_path, other)
