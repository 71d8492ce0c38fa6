"""Report batches: exact round trip (order kept, float32 scalars), size on the wire, input validation."""

from __future__ import annotations

import numpy as np
import pytest

from cooperllm.dtc import DTCError, decode_reports, encode_reports
from cooperllm.zgr import Report


def device_batch(n: int, seed_base: int = 7_000_000_000_123, seed: int = 0) -> list[Report]:
    """What a device uploads: seeds counted up from the round's base, blocks cycling, float32 scalars."""
    rng = np.random.default_rng(seed)
    return [Report(seed_base + i, i % 30, i // 30, float(np.float32(rng.standard_normal() * 5)), 16) for i in range(n)]


def test_round_trip_is_exact_and_ordered() -> None:
    reports = device_batch(500)
    reports[10], reports[400] = reports[400], reports[10]  # order is part of the replay contract
    assert decode_reports(encode_reports(reports)) == reports


def test_empty_and_single() -> None:
    assert decode_reports(encode_reports([])) == []
    one = [Report(0, -1, 0, 0.0, 0)]
    assert decode_reports(encode_reports(one)) == one


def test_extreme_fields() -> None:
    reports = [
        Report((1 << 63) - 1, (1 << 32) - 1, (1 << 63) - 1, 3.4e38, (1 << 32) - 1),
        Report(0, -1, 0, -1e-45, 0),
        Report((1 << 63) - 1, 0, 5, -0.0, 1),
    ]
    out = decode_reports(encode_reports(reports))
    assert [(r.seed, r.block, r.step, r.n_examples) for r in out] == [
        (r.seed, r.block, r.step, r.n_examples) for r in reports
    ]
    assert [r.scalar for r in out] == [float(np.float32(r.scalar)) for r in reports]


def test_scalars_float32_by_default_float64_on_request() -> None:
    reports = [Report(i, 0, i, 0.1 * (i + 1), 4) for i in range(20)]
    f32 = decode_reports(encode_reports(reports))
    assert [r.scalar for r in f32] == [float(np.float32(0.1 * (i + 1))) for i in range(20)]
    assert f32 != reports  # 0.1 is not a float32: the default rounds
    assert decode_reports(encode_reports(reports, scalar_bits=64)) == reports


@pytest.mark.parametrize("n", [30, 300, 3000])
def test_bytes_per_report_on_the_wire(n: int) -> None:
    frame = encode_reports(device_batch(n))
    assert len(frame) / n <= 16
    if n >= 300:  # 4-byte scalar + ~2 bytes of deltas once the 24-byte header is amortised
        assert len(frame) / n <= 6


def test_random_seeds_still_fit() -> None:
    rng = np.random.default_rng(1)
    reports = [Report(int(rng.integers(0, 1 << 40)), i % 30, i, 1.0 + i, 16) for i in range(1000)]
    frame = encode_reports(reports)
    assert decode_reports(frame) == reports
    assert len(frame) / len(reports) <= 16


@pytest.mark.parametrize(
    ("report", "match"),
    [
        (Report(-1, 0, 0, 1.0, 1), "seed"),
        (Report(1 << 63, 0, 0, 1.0, 1), "seed"),
        (Report(0, -2, 0, 1.0, 1), "block"),
        (Report(0, 0, -1, 1.0, 1), "step"),
        (Report(0, 0, 0, 1.0, -1), "n_examples"),
        (Report(0, 0, 0, 1e39, 1), "finite"),
        (Report(1.5, 0, 0, 1.0, 1), "seed"),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_bad_reports(report: Report, match: str) -> None:
    with pytest.raises(DTCError, match=match):
        encode_reports([report])


def test_bad_scalar_bits() -> None:
    with pytest.raises(DTCError, match="scalar_bits"):
        encode_reports([], scalar_bits=16)
