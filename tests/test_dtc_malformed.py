"""Malformed DTC frames: every broken field gives a DTCError that names it, never a crash or a huge allocation.

Frames are rebuilt here from their parts with a correct CRC (``seal``), so each test reaches the check it targets
instead of stopping at the checksum.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import zstandard

from cooperllm import dtc
from cooperllm.dtc import DTCError, decode, decode_reports, encode, encode_reports
from cooperllm.zgr import Report


def seal(
    body: bytes,
    shape: tuple[int, ...],
    *,
    block_size: int = 8,
    flags: int = 0,
    compress: bool = False,
    magic: bytes = dtc.MAGIC,
    version: int = dtc.VERSION,
    kind: int = dtc.KIND_TENSOR,
    dtype: int = dtc.DTYPE_FLOAT32,
    scale_format: int = dtc.SCALE_FLOAT32,
    reserved: int = 0,
    body_len: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """A tensor frame around ``body`` with a valid CRC (docs/DTC.md §2), fields overridable to break one."""
    if payload is None:
        payload = zstandard.ZstdCompressor().compress(body) if compress else body
        flags |= dtc.FLAG_ZSTD if compress else 0
    head = struct.pack(
        "<4sBBBBBBHI", magic, version, kind, dtype, flags, len(shape), scale_format, reserved, block_size
    )
    head += struct.pack(f"<{len(shape)}Q", *shape)
    head += struct.pack("<II", len(body) if body_len is None else body_len, len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def tensor_body(bits: list[int], scales: list[float], data: bytes) -> bytes:
    return bytes(bits) + np.asarray(scales, "<f4").tobytes() + data


VALID = tensor_body([4, 4], [1.0, 2.0], bytes(4) + bytes(1))  # shape (10,), block 8: 4 bytes + 1 byte of codes


def test_seal_matches_the_encoder() -> None:
    x = np.arange(10, dtype=np.float32)
    frame = encode(x, bits=4, block_size=8)
    header_len = 16 + 8 + 12
    assert seal(frame[header_len:], (10,), flags=frame[7]) == frame
    assert decode(seal(VALID, (10,))).tolist() == [0.0] * 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"magic": b"XDTC"}, "not a DTC frame"),
        ({"version": 2}, "unsupported DTC version 2"),
        ({"kind": dtc.KIND_REPORTS}, "holds reports, expected tensor"),
        ({"kind": 9}, "kind 9"),
        ({"dtype": 2}, "dtype"),
        ({"flags": 0x80}, "flag"),
        ({"scale_format": 2}, "scale format"),
        ({"reserved": 1}, "reserved"),
        ({"block_size": 12}, "block size"),
        ({"block_size": 0}, "block size"),
        ({"block_size": 1 << 24}, "block size"),
        ({"body_len": 10**6}, "body length"),
        ({"body_len": 3}, "body length"),
    ],
)
def test_bad_header_fields(kwargs: dict, match: str) -> None:
    with pytest.raises(DTCError, match=match):
        decode(seal(VALID, (10,), **kwargs))


def test_absurd_dimensions_are_rejected_before_allocating() -> None:
    tracemalloc.start()
    for shape in [(1 << 40,), (1 << 20, 1 << 20), (2**64 - 1,), (1 << 16,) * 8]:
        with pytest.raises(DTCError, match="over the limit"):
            decode(seal(VALID, shape))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 << 20
    with pytest.raises(DTCError, match="dimensions"):
        decode(seal(VALID, (1,) * 9))
    for shape in [(0, 2**64 - 1), (2**40, 0)]:  # zero elements, but an absurd dimension all the same
        with pytest.raises(DTCError, match="dimension is over the limit"):
            decode(seal(b"", shape))
    with pytest.raises(DTCError, match="over the limit of 5"):
        decode(seal(VALID, (10,)), max_elements=5)


def test_shape_size_mismatch() -> None:
    with pytest.raises(DTCError, match="data bytes"):
        decode(seal(VALID, (16,)))  # two full chunks need 8 bytes of codes, the body has 5
    with pytest.raises(DTCError, match="data bytes"):
        decode(seal(VALID, (12,)))  # 8 + 4 values need 4 + 2 bytes
    with pytest.raises(DTCError, match="body length"):
        decode(seal(VALID, (1000,)))


def test_every_truncation_and_extension_is_rejected() -> None:
    frame = encode(np.random.default_rng(0).standard_normal(300).astype(np.float32))
    for cut in range(len(frame)):
        with pytest.raises(DTCError):
            decode(frame[:cut])
    with pytest.raises(DTCError, match="trailing bytes"):
        decode(frame + b"\0")


def test_every_single_byte_corruption_is_rejected() -> None:
    frame = encode(np.random.default_rng(0).standard_normal(100).astype(np.float32), bits=6)
    for i in range(len(frame)):
        broken = bytearray(frame)
        broken[i] ^= 0x41
        with pytest.raises(DTCError):
            decode(bytes(broken))


def test_bad_bit_widths_scales_codes_and_values() -> None:
    cases = [
        (tensor_body([5, 4], [1.0, 1.0], bytes(5)), "invalid bit width 5"),
        (tensor_body([4, 4], [float("nan"), 1.0], bytes(5)), "NaN or Inf chunk scale"),
        (tensor_body([4, 4], [1.0, float("inf")], bytes(5)), "NaN or Inf chunk scale"),
        (tensor_body([4, 4], [-1.0, 1.0], bytes(5)), "negative"),
        (tensor_body([4, 4], [1.0, 1.0], b"\x0f" + bytes(4)), "out-of-range 4-bit code"),
        (tensor_body([32, 4], [0.0, 1.0], np.full(8, np.nan, "<f4").tobytes() + bytes(1)), "NaN or Inf raw"),
        (tensor_body([32, 4], [1.0, 1.0], bytes(32) + bytes(1)), "nonzero scale on a raw"),
    ]
    for body, match in cases:
        with pytest.raises(DTCError, match=match):
            decode(seal(body, (10,)))
    # shape (9,): the last chunk holds one 4-bit code, the high nibble of its byte is padding and must be zero
    assert decode(seal(tensor_body([4, 4], [1.0, 1.0], bytes(4) + b"\x01"), (9,)))[-1] == -1.0
    with pytest.raises(DTCError, match="padding bits"):
        decode(seal(tensor_body([4, 4], [1.0, 1.0], bytes(4) + b"\x10"), (9,)))


def test_zstd_payload_problems() -> None:
    comp = zstandard.ZstdCompressor()
    with pytest.raises(DTCError, match="not a zstd frame"):
        decode(seal(VALID, (10,), flags=dtc.FLAG_ZSTD, payload=b"garbage!" * 4))
    with pytest.raises(DTCError, match="declares"):
        decode(seal(VALID, (10,), flags=dtc.FLAG_ZSTD, payload=comp.compress(VALID + b"\0")))
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(VALID)
    with pytest.raises(DTCError, match="declares"):
        decode(seal(VALID, (10,), flags=dtc.FLAG_ZSTD, payload=no_size))
    with pytest.raises(DTCError, match="after its zstd frame"):
        decode(seal(VALID, (10,), flags=dtc.FLAG_ZSTD, payload=comp.compress(VALID) + b"xx"))
    good = comp.compress(VALID)
    with pytest.raises(DTCError):
        decode(seal(VALID, (10,), flags=dtc.FLAG_ZSTD, payload=good[:-3]))
    assert decode(seal(VALID, (10,), compress=True)).shape == (10,)


def test_decompression_bomb_is_refused_without_inflating() -> None:
    """1 GiB of zeros compresses to ~40 KB; the header's caps refuse it before anything is allocated."""
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(1 << 30))
    assert len(bomb) < 100_000
    tracemalloc.start()
    with pytest.raises(DTCError):  # declared body too big for the shape
        decode(seal(b"", (1 << 20,), flags=dtc.FLAG_ZSTD, payload=bomb, body_len=1 << 30))
    with pytest.raises(DTCError, match="declares"):  # header is modest, the zstd frame is not
        decode(seal(b"", (1 << 20,), flags=dtc.FLAG_ZSTD, payload=bomb, body_len=(1 << 20) + 5 * 4096))
    with pytest.raises(DTCError, match="over the limit"):
        decode(seal(b"", (1 << 28,), flags=dtc.FLAG_ZSTD, payload=bomb, body_len=1 << 30))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 << 20


def test_non_bytes_input() -> None:
    for bad in (None, "CDTC", 42, [1, 2]):
        with pytest.raises(DTCError, match="must be bytes"):
            decode(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# report batches


def seal_reports(body: bytes, count: int, *, fmt: int = dtc.SCALAR_FLOAT32, flags: int = 0) -> bytes:
    head = struct.pack("<4sBBBBIII", dtc.MAGIC, dtc.VERSION, dtc.KIND_REPORTS, fmt, flags, count, len(body), len(body))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


def report_body(seeds: list[int], blocks: list[int], steps: list[int], ns: list[int], scalars: list[float]) -> bytes:
    out = bytearray()
    for col in (seeds, blocks, steps, ns):
        prev = 0
        for v in col:
            d = v - prev
            z = (d << 1) if d >= 0 else ((-d) << 1) - 1
            while z >= 0x80:
                out.append((z & 0x7F) | 0x80)
                z >>= 7
            out.append(z)
            prev = v
    out += np.asarray(scalars, "<f4").view(np.uint8).reshape(-1, 4).T.tobytes()
    return bytes(out)


def test_seal_reports_matches_the_encoder() -> None:
    reports = [Report(5, 0, 0, 1.5, 16), Report(6, -1, 1, -2.0, 8)]
    body = report_body([5, 6], [0, -1], [0, 1], [16, 8], [1.5, -2.0])
    assert decode_reports(seal_reports(body, 2)) == reports


@pytest.mark.parametrize(
    ("body", "count", "match"),
    [
        (report_body([-1], [0], [0], [1], [1.0]), 1, "seed"),
        (report_body([(1 << 63) - 1, 1 << 63], [0, 0], [0, 0], [1, 1], [1.0, 1.0]), 2, "seed"),
        (report_body([1], [-2], [0], [1], [1.0]), 1, "block"),
        (report_body([1], [1 << 32], [0], [1], [1.0]), 1, "block"),
        (report_body([1], [0], [-1], [1], [1.0]), 1, "step"),
        (report_body([1], [0], [0], [-1], [1.0]), 1, "n_examples"),
        (report_body([1], [0], [0], [1], [float("nan")]), 1, "NaN or Inf scalar"),
        (report_body([1], [0], [0], [1], [float("inf")]), 1, "NaN or Inf scalar"),
        (b"\xff" * 11 + bytes(7), 1, "varint longer than 10"),
        (b"\xff" * 9 + b"\x7f" + bytes(8), 1, "above 2"),
        (report_body([1, 2], [0, 0], [0, 0], [1, 1], [1.0, 2.0]), 3, "truncated|body length|scalar bytes"),
        (report_body([1, 2], [0, 0], [0, 0], [1, 1], [1.0, 2.0]) + b"\0", 2, "scalar bytes"),
    ],
)
def test_bad_report_fields(body: bytes, count: int, match: str) -> None:
    with pytest.raises(DTCError, match=match):
        decode_reports(seal_reports(body, count))


def test_report_batch_header_problems() -> None:
    frame = encode_reports([Report(i, 0, 0, 1.0, 1) for i in range(50)])
    for cut in range(len(frame)):
        with pytest.raises(DTCError):
            decode_reports(frame[:cut])
    with pytest.raises(DTCError):
        decode_reports(frame + b"\0")
    for i in range(len(frame)):
        broken = bytearray(frame)
        broken[i] ^= 0x41
        with pytest.raises(DTCError):
            decode_reports(bytes(broken))
    with pytest.raises(DTCError, match="holds tensor, expected reports"):
        decode_reports(encode(np.ones(4, np.float32)))
    with pytest.raises(DTCError, match="over the limit"):
        decode_reports(frame, max_reports=10)
    with pytest.raises(DTCError, match="scalar format"):
        decode_reports(seal_reports(report_body([1], [0], [0], [1], [1.0]), 1, fmt=7))


def test_a_scale_that_would_overflow_its_codes_is_refused():
    """A finite chunk scale near float32's maximum times a code of 2 or more is ±inf: found by the fuzz campaign
    (a resealed frame decoded to an inf), now a DTCError. The same frame at a sane scale decodes."""
    codes = bytes([4, 0, 0, 0, 0, 0, 0, 0])  # 8-bit zig-zag code 4 is q = 2, then zeros
    big = float(np.finfo(np.float32).max) / 2
    with pytest.raises(DTCError, match="overflows float32"):
        decode(seal(tensor_body([8], [big], codes), (8,)))
    assert decode(seal(tensor_body([8], [0.5], codes), (8,))).tolist() == [1.0] + [0.0] * 7
