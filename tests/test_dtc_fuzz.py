"""Fuzzing the DTC decoders with hypothesis: whatever the bytes, the answer is a valid array or a DTCError.

The default tier runs a few hundred examples per property; ``-m integration`` runs a bounded-time campaign
(``COOPERLLM_FUZZ_SECONDS``, default 120 s in all). Mutated frames are resealed (payload length and CRC fixed up)
half of the time, so the fuzzer gets past the checksum into the body parsing.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cooperllm import dtc
from cooperllm.dtc import DTCError, decode, decode_reports, encode, encode_reports
from cooperllm.zgr import Report

QUICK = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
MAX_ELEMENTS = 1 << 16  # keeps a fuzzed frame from asking for a legitimately large but slow array


def reseal_tensor(frame: bytes) -> bytes:
    """Fix payload_len and the CRC of a (mutated) tensor frame, when its header is long enough to have them."""
    if len(frame) < 16 or frame[8] > dtc.MAX_NDIM:
        return frame
    header_len = 16 + 8 * frame[8] + 12
    if len(frame) < header_len:
        return frame
    head = bytearray(frame[: header_len - 4])
    struct.pack_into("<I", head, header_len - 8, len(frame) - header_len)
    payload = frame[header_len:]
    return bytes(head) + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def reseal_reports(frame: bytes) -> bytes:
    if len(frame) < 24:
        return frame
    head = bytearray(frame[:20])
    struct.pack_into("<I", head, 16, len(frame) - 24)
    payload = frame[24:]
    return bytes(head) + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def check_tensor(frame: bytes) -> None:
    try:
        out = decode(frame, max_elements=MAX_ELEMENTS)
    except DTCError:
        return
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.size <= MAX_ELEMENTS


def check_reports(frame: bytes) -> None:
    try:
        out = decode_reports(frame, max_reports=10_000)
    except DTCError:
        return
    assert all(isinstance(r, Report) and np.isfinite(r.scalar) for r in out)


@st.composite
def valid_tensor_frames(draw: st.DrawFn) -> bytes:
    x = draw(
        arrays(
            np.float32,
            st.integers(0, 600),
            elements=st.floats(-(2.0**100), 2.0**100, width=32),
        )
    )
    bits = draw(st.sampled_from([None, *dtc.BITS_CHOICES, 32]))
    block = draw(st.sampled_from([8, 16, 64, 256]))
    return encode(x, bits=bits, block_size=block, stochastic=draw(st.booleans()), seed=draw(st.integers(0, 9)))


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes], reseal) -> bytes:
    frame = bytearray(draw(frames))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[pos] = draw(st.sampled_from([0, 1, 2, 7, 8, 16, 32, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del frame[pos:]
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and frame:
            del frame[pos : pos + draw(st.integers(1, 8))]
    out = bytes(frame)
    return reseal(out) if draw(st.booleans()) else out


@st.composite
def valid_report_frames(draw: st.DrawFn) -> bytes:
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, (1 << 63) - 1),
                st.integers(-1, (1 << 32) - 1),
                st.integers(0, 1 << 40),
                st.floats(-(2.0**100), 2.0**100, width=32),
                st.integers(0, 1 << 20),
            ),
            max_size=40,
        )
    )
    return encode_reports([Report(*r) for r in rows])


@st.composite
def structured_tensor_frames(draw: st.DrawFn) -> bytes:
    """Plausible headers around random bodies, to exercise the bit-table and code checks."""
    n = draw(st.integers(0, 300))
    block = draw(st.sampled_from([8, 16, 64]))
    chunks = -(-n // block)
    bits = draw(st.lists(st.sampled_from([2, 3, 4, 6, 8, 16, 32, 0, 5]), min_size=chunks, max_size=chunks))
    scales = draw(st.lists(st.sampled_from([0.0, 1.0, 1e-3, -1.0, float("nan")]), min_size=chunks, max_size=chunks))
    body = bytes(bits) + np.asarray(scales, "<f4").tobytes() + draw(st.binary(max_size=1200))
    head = struct.pack("<4sBBBBBBHIQ", dtc.MAGIC, 1, 1, 1, 0, 1, 1, 0, block, n)
    return reseal_tensor(head + struct.pack("<III", len(body), 0, 0) + body)


@QUICK
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_tensor(data)
    check_reports(data)
    check_tensor(dtc.MAGIC + data)
    check_reports(dtc.MAGIC + data)


@QUICK
@given(mutated(valid_tensor_frames(), reseal_tensor))
def test_mutated_tensor_frames(frame: bytes) -> None:
    check_tensor(frame)


@QUICK
@given(structured_tensor_frames())
def test_structured_tensor_frames(frame: bytes) -> None:
    check_tensor(frame)


@QUICK
@given(mutated(valid_report_frames(), reseal_reports))
def test_mutated_report_frames(frame: bytes) -> None:
    check_reports(frame)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1e6, 1e6, width=32)),
    st.sampled_from([1e-1, 1e-2, 1e-3, 1e-5]),
)
def test_round_trip_property(x: np.ndarray, delta: float) -> None:
    y = decode(encode(x, cosine_budget=delta))
    assert y.shape == x.shape
    nx = np.linalg.norm(x.astype(np.float64))
    if nx > 0:
        assert float(x.astype(np.float64) @ y / (nx * np.linalg.norm(y.astype(np.float64)))) >= 1 - delta - 1e-9
    assert decode(encode(x, bits=32)).tobytes() == x.tobytes()


# ----------------------------------------------------------------------------------------------------------------
# integration tier: a bounded-time campaign over the same strategies

FUZZ_SECONDS = float(os.environ.get("COOPERLLM_FUZZ_SECONDS", "120"))
CAMPAIGN = [
    (st.binary(max_size=2000), lambda f: (check_tensor(f), check_reports(f))),
    (mutated(valid_tensor_frames(), reseal_tensor), check_tensor),
    (structured_tensor_frames(), check_tensor),
    (mutated(valid_report_frames(), reseal_reports), check_reports),
]


@pytest.mark.integration
@pytest.mark.parametrize("index", range(len(CAMPAIGN)))
def test_fuzz_campaign(index: int) -> None:
    """Rounds of 500 fresh random examples until this strategy's share of the time budget is spent."""
    strategy, check = CAMPAIGN[index]
    stop = time.monotonic() + FUZZ_SECONDS / len(CAMPAIGN)
    count = 0

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def one_round(frame: bytes) -> None:
        nonlocal count
        count += 1
        check(frame)

    while time.monotonic() < stop:
        one_round()
    print(f"fuzz strategy {index}: {count} examples in {FUZZ_SECONDS / len(CAMPAIGN):.0f} s")
    assert count >= 500
