"""Lossless adapter deltas: θ_R sent as its difference from a θ_R0 the device already holds (torch-free).

A device that missed rounds cannot replay them; instead of the full adapter it asks ``GET /v1/adapter/delta?from=R0
&to=R`` and gets one frame::

    magic "CLTD" | version u8 | flags u8 (0) | reserved u16 (0) | n u32 | from u32 | to u32
    | sha256(θ_R0) 32 B | sha256(θ_R) 32 B | payload length u32 | crc32(payload) u32 | payload

(little-endian; the checksums are :func:`cooperllm.layout.theta_checksum`'s digests). The payload is zstd of the
byte-plane-shuffled XOR of θ_R's and θ_R0's little-endian float32 bit patterns, θ flattened in layout order: first
every value's lowest byte, then every second byte, …; consecutive rounds share sign, exponent and high mantissa
bits, so the high planes are mostly zeros. XOR of bit patterns is exact for every float (NaN payloads and −0
included): the decoded θ is θ_R bit for bit, which the decoder checks against the header's checksum.

:func:`decode` validates every field before acting on it (magic, version, reserved bits, ``n`` against a cap and the
base's size, the payload's length and crc32, the zstd frame's declared size before decompressing, exactly one zstd
frame) and raises :class:`ThetaDeltaError` (a ValueError) with what was wrong. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

MAGIC = b"CLTD"
VERSION = 1
DEFAULT_LEVEL = 9  # zstd level: ~55 ms per SmolLM2 θ (1.85 MB) on a busy core; 3: 0.8 % larger, 3× faster
MAX_VALUES = 1 << 27  # values a frame may declare (512 MiB of float32): the cap before anything is allocated
MAX_ROUND = (1 << 32) - 1
_HEADER = struct.Struct("<4sBBHIII32s32sII")
HEADER_SIZE = _HEADER.size


class ThetaDeltaError(ValueError):
    """A malformed or mismatched delta frame; the message says which field."""


@dataclass(frozen=True)
class DeltaHeader:
    n: int  # float32 values of θ
    from_version: int  # R0: the round whose starting θ is the base
    to_version: int  # R: the round whose starting θ the frame rebuilds
    from_checksum: str  # theta_checksum(θ_R0), hex
    to_checksum: str  # theta_checksum(θ_R), hex
    payload_len: int


def _bits(theta: np.ndarray) -> np.ndarray:
    """θ's little-endian float32 bit patterns, flat (a view where θ already is contiguous <f4)."""
    return np.ascontiguousarray(theta, dtype="<f4").reshape(-1).view("<u4")


def _digest(bits: np.ndarray) -> bytes:
    return hashlib.sha256(bits.tobytes()).digest()  # == bytes.fromhex(theta_checksum(θ))


def shuffle_planes(words: np.ndarray) -> bytes:
    """uint32 words → their byte planes one after the other (all byte 0s, then all byte 1s, …)."""
    return np.ascontiguousarray(words, dtype="<u4").view(np.uint8).reshape(-1, 4).T.tobytes()


def unshuffle_planes(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`shuffle_planes`: ``4·n`` bytes → n little-endian uint32 words."""
    planes = np.frombuffer(data, dtype=np.uint8).reshape(4, n)
    return np.ascontiguousarray(planes.T).view("<u4").reshape(-1)


def encode(
    theta_to: np.ndarray, theta_from: np.ndarray, *, from_version: int, to_version: int, level: int = DEFAULT_LEVEL
) -> bytes:
    """The frame that turns ``theta_from`` (θ at round ``from_version``) into ``theta_to`` (round ``to_version``)."""
    new, old = _bits(theta_to), _bits(theta_from)
    if new.size != old.size:
        raise ThetaDeltaError(f"θ sizes differ: {new.size} values to encode, a base of {old.size}")
    if not 1 <= new.size <= MAX_VALUES:
        raise ThetaDeltaError(f"θ has {new.size} values, a frame holds 1 to {MAX_VALUES}")
    for name, v in (("from", from_version), ("to", to_version)):
        if not 0 <= v <= MAX_ROUND:
            raise ThetaDeltaError(f"{name} version {v} outside [0, {MAX_ROUND}]")
    payload = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(shuffle_planes(new ^ old))
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        0,
        0,
        new.size,
        from_version,
        to_version,
        _digest(old),
        _digest(new),
        len(payload),
        zlib.crc32(payload),
    )
    return header + payload


def read_header(frame: bytes, *, max_values: int = MAX_VALUES) -> DeltaHeader:
    """The frame's header, every field checked against the frame itself (not yet against a base)."""
    if len(frame) < HEADER_SIZE:
        raise ThetaDeltaError(f"truncated delta frame: {len(frame)} bytes, the header alone is {HEADER_SIZE}")
    magic, version, flags, reserved, n, v0, v1, sha0, sha1, payload_len, crc = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ThetaDeltaError(f"not a θ delta frame: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ThetaDeltaError(f"unsupported θ delta version {version} (this decoder reads version {VERSION})")
    if flags or reserved:
        raise ThetaDeltaError(f"reserved header bits set (flags {flags}, reserved {reserved})")
    if not 1 <= n <= max_values:
        raise ThetaDeltaError(f"frame declares {n} values, at most {max_values} are accepted")
    if v0 > v1:
        raise ThetaDeltaError(f"frame goes from version {v0} back to {v1}")
    if payload_len != len(frame) - HEADER_SIZE:
        raise ThetaDeltaError(
            f"frame declares a {payload_len}-byte payload but carries {len(frame) - HEADER_SIZE} bytes"
            + (" (truncated)" if payload_len > len(frame) - HEADER_SIZE else "")
        )
    if zlib.crc32(memoryview(frame)[HEADER_SIZE:]) != crc:
        raise ThetaDeltaError("payload crc32 mismatch (corrupted in transit)")
    return DeltaHeader(n, v0, v1, sha0.hex(), sha1.hex(), payload_len)


def decode(
    frame: bytes,
    theta_from: np.ndarray,
    *,
    from_version: int | None = None,
    to_version: int | None = None,
    max_values: int = MAX_VALUES,
) -> np.ndarray:
    """θ_R (float32, flat, layout order) from a frame and the base θ_R0 it was made against.

    ``from_version`` / ``to_version``, when given, must be the frame's; the base must be the θ whose checksum the
    frame names (a device whose θ drifted is told so, not handed a wrong model) and the result is checked against
    the frame's θ_R checksum."""
    head = read_header(frame, max_values=max_values)
    for name, want, got in (("from", from_version, head.from_version), ("to", to_version, head.to_version)):
        if want is not None and want != got:
            raise ThetaDeltaError(f"frame's {name} version is {got}, expected {want}")
    old = _bits(theta_from)
    if old.size != head.n:
        raise ThetaDeltaError(f"frame holds {head.n} values, the base θ has {old.size}")
    if _digest(old).hex() != head.from_checksum:
        raise ThetaDeltaError(f"the base θ is not θ of version {head.from_version} (checksum differs)")
    size = 4 * head.n
    payload = frame[HEADER_SIZE:]
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise ThetaDeltaError(f"payload is not a zstd frame: {exc}") from exc
    if declared != size:
        raise ThetaDeltaError(f"zstd frame declares {declared} bytes, {head.n} values need {size}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ThetaDeltaError(f"corrupt zstd payload: {exc}") from exc
    if len(raw) != size:
        raise ThetaDeltaError(f"payload inflates to {len(raw)} bytes, {head.n} values need {size}")
    new = unshuffle_planes(raw, head.n) ^ old
    if _digest(new).hex() != head.to_checksum:
        raise ThetaDeltaError(f"decoded θ does not match version {head.to_version}'s checksum")
    return new.view("<f4").astype(np.float32, copy=False)
