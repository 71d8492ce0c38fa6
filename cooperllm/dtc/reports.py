"""DTC report batches: a round's ZO reports (seed, block, step, scalar, examples) as delta- and varint-coded rows,
zstd-compressed and CRC-checked; scalars as float32 or float64."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np
import zstandard

from cooperllm.dtc.wire import (
    DEFAULT_LEVEL,
    DEFAULT_MAX_REPORTS,
    FLAG_ZSTD,
    KIND_REPORTS,
    MAGIC,
    SCALAR_FLOAT32,
    SCALAR_FLOAT64,
    VERSION,
    DTCError,
    _as_bytes,
    _check_prefix,
    _inflate,
)
from cooperllm.zgr import Report

_REPORTS_HEADER = struct.Struct("<4sBBBBIIII")  # magic version kind scalar_format flags count body payload crc
_U64_MAX = (1 << 64) - 1
_MAX_SEED = (1 << 63) - 1

# report batches


def _put_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _zz(v: int) -> int:
    return (v << 1) if v >= 0 else ((-v) << 1) - 1


def _unzz(u: int) -> int:
    return (u >> 1) if not u & 1 else -((u + 1) >> 1)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def varint(self) -> int:
        v, shift = 0, 0
        while True:
            if self.pos >= len(self.data):
                raise DTCError("truncated report batch: a varint runs past the end")
            byte = self.data[self.pos]
            self.pos += 1
            v |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 70:
                raise DTCError("report batch has a varint longer than 10 bytes")
        if v > _U64_MAX:
            raise DTCError("report batch has a varint above 2^64 − 1")
        return v

    def column(self, count: int, start: int) -> list[int]:
        """``count`` zig-zag deltas, running from ``start``."""
        out, prev = [], start
        for _ in range(count):
            prev += _unzz(self.varint())
            out.append(prev)
        return out


def encode_reports(reports: Sequence[Report], *, scalar_bits: int = 32, level: int = DEFAULT_LEVEL) -> bytes:
    """Batch reports into one frame: columns of zig-zag varint deltas (seed, block, step, n_examples), then the
    scalars (float32 by default, byte-plane shuffled), zstd. Order is kept: ``apply_update`` depends on it.

    With ``scalar_bits=32`` scalars are rounded to float32: devices should compute p in float32 (or round it) so
    the server replays exactly what they applied. ``scalar_bits=64`` keeps Python floats exactly.
    """
    if scalar_bits not in (32, 64):
        raise DTCError(f"scalar_bits must be 32 or 64, got {scalar_bits}")
    body = bytearray()
    for field, lo, hi in (
        ("seed", 0, _MAX_SEED),
        ("block", -1, (1 << 32) - 1),
        ("step", 0, _MAX_SEED),
        ("n_examples", 0, (1 << 32) - 1),
    ):
        prev = 0
        for r in reports:
            v = getattr(r, field)
            if not isinstance(v, int | np.integer) or not lo <= int(v) <= hi:
                raise DTCError(f"report {field} {v!r} is outside [{lo}, {hi}]")
            _put_varint(body, _zz(int(v) - prev))
            prev = int(v)
    dtype = "<f4" if scalar_bits == 32 else "<f8"
    scalars = np.array([r.scalar for r in reports], dtype=np.float64)
    with np.errstate(over="ignore"):
        stored = scalars.astype(dtype)
    if not np.isfinite(stored).all():
        raise DTCError(f"report scalars must be finite (as float{scalar_bits})")
    width = scalar_bits // 8
    planes = stored.view(np.uint8).reshape(-1, width).T  # byte-plane shuffle: zstd sees exponents
    body += planes.tobytes()
    payload, flags = bytes(body), 0
    compressed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(bytes(body))
    if len(compressed) < len(body):
        payload, flags = compressed, FLAG_ZSTD
    fmt = SCALAR_FLOAT32 if scalar_bits == 32 else SCALAR_FLOAT64
    head = _REPORTS_HEADER.pack(MAGIC, VERSION, KIND_REPORTS, fmt, flags, len(reports), len(body), len(payload), 0)
    head = head[:-4]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def decode_reports(frame: bytes, *, max_reports: int = DEFAULT_MAX_REPORTS) -> list[Report]:
    """Decode a report batch; every field is range-checked (seed, block, step, n_examples, finite scalars)."""
    frame = _as_bytes(frame)
    _check_prefix(frame, KIND_REPORTS)
    if len(frame) < _REPORTS_HEADER.size:
        raise DTCError(f"truncated report batch: {len(frame)} bytes, the header needs {_REPORTS_HEADER.size}")
    _, _, _, fmt, flags, count, body_len, payload_len, crc = _REPORTS_HEADER.unpack_from(frame)
    if fmt not in (SCALAR_FLOAT32, SCALAR_FLOAT64):
        raise DTCError(f"unsupported scalar format {fmt}")
    if flags & ~FLAG_ZSTD:
        raise DTCError(f"unknown flag bits 0x{flags:02x}")
    if count > max_reports:
        raise DTCError(f"batch declares {count} reports, over the limit of {max_reports}")
    width = 4 if fmt == SCALAR_FLOAT32 else 8
    if not count * (4 + width) <= body_len <= count * (40 + width):
        raise DTCError(f"body length {body_len} is impossible for {count} reports")
    if len(frame) != _REPORTS_HEADER.size + payload_len:
        raise DTCError(f"report batch is {len(frame)} bytes, its header says {_REPORTS_HEADER.size + payload_len}")
    head = _REPORTS_HEADER.size - 4
    if zlib.crc32(frame[head + 4 :], zlib.crc32(frame[:head])) != crc:
        raise DTCError("checksum mismatch: the report batch is corrupted")
    payload = frame[_REPORTS_HEADER.size :]
    body = _inflate(payload, body_len) if flags & FLAG_ZSTD else payload
    if len(body) != body_len:
        raise DTCError(f"body is {len(body)} bytes, the header says {body_len}")
    reader = _Reader(body)
    columns = [reader.column(count, 0) for _ in range(4)]
    if len(body) - reader.pos != count * width:
        raise DTCError(f"report batch has {len(body) - reader.pos} scalar bytes, expected {count * width}")
    planes = np.frombuffer(body, dtype=np.uint8, offset=reader.pos).reshape(width, count)
    scalars = np.ascontiguousarray(planes.T).view("<f4" if width == 4 else "<f8").reshape(count)
    if not np.isfinite(scalars).all():
        raise DTCError("report batch has a NaN or Inf scalar")
    out = []
    for seed, block, step, n_ex, p in zip(*columns, scalars.tolist(), strict=True):
        if not 0 <= seed <= _MAX_SEED:
            raise DTCError(f"report seed {seed} is outside [0, 2^63 − 1]")
        if not -1 <= block < (1 << 32):
            raise DTCError(f"report block {block} is outside [-1, 2^32)")
        if not 0 <= step <= _MAX_SEED:
            raise DTCError(f"report step {step} is negative or too large")
        if not 0 <= n_ex < (1 << 32):
            raise DTCError(f"report n_examples {n_ex} is outside [0, 2^32)")
        out.append(Report(seed=seed, block=block, step=step, scalar=float(p), n_examples=n_ex))
    return out
