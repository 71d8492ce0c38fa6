"""DTC wire basics shared by both frame kinds: format constants, the error type, the frame prefix check and the
bounded zstd inflate (every declared size is checked before anything is allocated). Byte layout: ``docs/DTC.md``."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

MAGIC = b"CDTC"
VERSION = 1
KIND_TENSOR = 1
KIND_REPORTS = 2
DTYPE_FLOAT32 = 1
SCALE_FLOAT32 = 1
FLAG_STOCHASTIC = 0x01
FLAG_ZSTD = 0x02
BITS_CHOICES = (2, 3, 4, 6, 8, 16)
LOSSLESS_BITS = 32
VALID_BITS = (*BITS_CHOICES, LOSSLESS_BITS)
DEFAULT_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 1 << 20
MAX_NDIM = 8
DEFAULT_MAX_ELEMENTS = 1 << 27
DEFAULT_MAX_REPORTS = 1 << 20
DEFAULT_LEVEL = 3
SCALAR_FLOAT32 = 1
SCALAR_FLOAT64 = 2

_PREFIX = struct.Struct("<4sBB")  # magic, version, kind


class DTCError(ValueError):
    """A frame that cannot be encoded or decoded; the message says which field is wrong."""


@dataclass(frozen=True)
class FrameInfo:
    """What a tensor frame's header and bit table say, for benchmarks and logs (``inspect_frame``)."""

    shape: tuple[int, ...]
    block_size: int
    bits: np.ndarray  # uint8 per chunk
    frame_bytes: int
    body_bytes: int
    compressed: bool
    stochastic: bool

    @property
    def bits_per_value(self) -> float:
        n = math.prod(self.shape)
        return 8.0 * self.frame_bytes / n if n else 0.0


# ----------------------------------------------------------------------------------------------------------------
# shared frame helpers


def _as_bytes(frame: bytes) -> bytes:
    if isinstance(frame, bytes | bytearray | memoryview):
        return bytes(frame)
    raise DTCError(f"a frame must be bytes, got {type(frame).__name__}")


def _check_prefix(frame: bytes, kind: int) -> None:
    if len(frame) < _PREFIX.size:
        raise DTCError(f"truncated frame: {len(frame)} bytes")
    magic, version, got_kind = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise DTCError(f"not a DTC frame: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DTCError(f"unsupported DTC version {version} (this decoder reads version {VERSION})")
    if got_kind != kind:
        names = {KIND_TENSOR: "tensor", KIND_REPORTS: "reports"}
        raise DTCError(f"frame holds {names.get(got_kind, f'kind {got_kind}')}, expected {names[kind]}")


def _inflate(payload: bytes, body_len: int) -> bytes:
    """zstd-decompress exactly one frame whose declared content size must equal ``body_len`` (checked first)."""
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise DTCError(f"payload is not a zstd frame: {exc}") from exc
    if declared != body_len:
        raise DTCError(f"zstd frame declares {declared} bytes, the header says {body_len}")
    if _zstd_frame_length(payload) != len(payload):
        raise DTCError("payload has bytes after its zstd frame")
    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=body_len)
    except zstandard.ZstdError as exc:
        raise DTCError(f"corrupt zstd payload: {exc}") from exc


def _zstd_frame_length(payload: bytes) -> int:
    """Compressed length of the zstd frame at the start of ``payload`` (walks block headers; RFC 8878 §3.1.1)."""
    try:
        pos = zstandard.frame_header_size(payload)
    except zstandard.ZstdError as exc:
        raise DTCError(f"bad zstd frame header: {exc}") from exc
    checksum = bool(payload[4] & 0x04)
    while True:
        if pos + 3 > len(payload):
            raise DTCError("truncated zstd payload")
        head = int.from_bytes(payload[pos : pos + 3], "little")
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3:
            raise DTCError("corrupt zstd payload: reserved block type")
        pos += 3 + (1 if kind == 1 else size)
        if last:
            return pos + (4 if checksum else 0)
