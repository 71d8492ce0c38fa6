"""DTC tensor frames: ``encode`` a float tensor into a versioned, CRC-checked frame with adaptive per-chunk bit widths,
``decode`` it back (a fixed sequence of float32 multiplies, so every receiver gets the same array bit for bit), and
``inspect_frame`` for benchmarks and logs."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from cooperllm.dtc.codes import (
    _choose_bits,
    _chunk_bytes,
    _code_values,
    _qmax,
    _quantize,
    _scales,
    _sq_error,
    _zigzag,
    pack_codes,
    unpack_codes,
)
from cooperllm.dtc.wire import (
    BITS_CHOICES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LEVEL,
    DEFAULT_MAX_ELEMENTS,
    DTYPE_FLOAT32,
    FLAG_STOCHASTIC,
    FLAG_ZSTD,
    KIND_TENSOR,
    LOSSLESS_BITS,
    MAGIC,
    MAX_BLOCK_SIZE,
    MAX_NDIM,
    SCALE_FLOAT32,
    VALID_BITS,
    VERSION,
    DTCError,
    FrameInfo,
    _as_bytes,
    _check_prefix,
    _inflate,
)

_TENSOR_FIXED = struct.Struct("<4sBBBBBBHI")  # magic version kind dtype flags ndim scale_format reserved block_size
_TENSOR_TAIL = struct.Struct("<III")  # body_len, payload_len, crc32

# tensor frames


def encode(
    array: np.ndarray,
    *,
    bits: int | None = None,
    cosine_budget: float | None = 1e-3,
    rel_l2_budget: float | None = None,
    byte_budget: int | None = None,
    stochastic: bool = False,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    level: int = DEFAULT_LEVEL,
    allocation: str = "global",
) -> bytes:
    """Encode a float array as one DTC frame.

    ``bits=None`` is adaptive: per chunk of ``block_size`` values, bits from {2,3,4,6,8,16} (32 = raw float32 when
    even 16 misses the budget) such that the whole decoded array keeps cosine ≥ 1 − ``cosine_budget`` and/or
    relative L2 error ≤ ``rel_l2_budget``, with the fewest bytes; ``byte_budget`` caps the frame size (quality
    gives way). ``bits=b`` quantizes every chunk with b bits; ``bits=32`` is lossless. ``stochastic`` rounds
    randomly (unbiased: E[decode] = x) with noise drawn from ``seed``. ``allocation="chunk"`` makes every chunk
    meet the budget on its own instead of trading bits between chunks (more bytes; for comparison).
    """
    x = np.asarray(array)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise DTCError(f"cannot encode dtype {x.dtype}: a real-valued array is required")
    if x.ndim > MAX_NDIM:
        raise DTCError(f"array has {x.ndim} dimensions, at most {MAX_NDIM} are supported")
    if bits is not None and bits not in VALID_BITS:
        raise DTCError(f"bits must be one of {VALID_BITS} or None (adaptive), got {bits}")
    if not (8 <= block_size <= MAX_BLOCK_SIZE and block_size % 8 == 0):
        raise DTCError(f"block_size must be a multiple of 8 in [8, {MAX_BLOCK_SIZE}], got {block_size}")
    if allocation not in ("global", "chunk"):
        raise DTCError(f"allocation must be 'global' or 'chunk', got {allocation!r}")
    if not -7 <= level <= 22:
        raise DTCError(f"zstd level must be in [-7, 22], got {level}")
    with np.errstate(over="ignore"):
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if not np.isfinite(flat).all():
        raise DTCError("array contains NaN or Inf (or values beyond float32): refusing to encode a non-finite tensor")
    n = flat.size
    n_chunks = -(-n // block_size)
    rem = n - (n_chunks - 1) * block_size if n_chunks else 0
    counts = np.full(n_chunks, block_size, dtype=np.int64)
    if n_chunks:
        counts[-1] = rem
    padded = np.zeros(n_chunks * block_size, dtype=np.float32)
    padded[:n] = flat
    rows = padded.reshape(n_chunks, block_size)
    amax = np.abs(rows).max(axis=1) if n_chunks else np.zeros(0, dtype=np.float32)
    noise = _noise(seed, rows.shape) if stochastic else None
    header_len = _TENSOR_FIXED.size + 8 * x.ndim + _TENSOR_TAIL.size
    fixed_overhead = header_len + n_chunks * 5  # bit table + float32 scales

    if bits is not None:
        chunk_bits = np.full(n_chunks, bits, dtype=np.uint8)
    else:
        chunk_bits = _adaptive_bits(
            rows, amax, counts, noise, cosine_budget, rel_l2_budget, byte_budget, fixed_overhead, allocation
        )
    frame = _assemble(x.shape, rows, amax, counts, chunk_bits, noise, block_size, stochastic, level)
    if byte_budget is not None and len(frame) > byte_budget:
        raise DTCError(f"byte_budget {byte_budget} too small: the frame needs {len(frame)} bytes")
    return frame


def _noise(seed: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _adaptive_bits(
    rows: np.ndarray,
    amax: np.ndarray,
    counts: np.ndarray,
    noise: np.ndarray | None,
    cosine_budget: float | None,
    rel_l2_budget: float | None,
    byte_budget: int | None,
    fixed_overhead: int,
    allocation: str,
) -> np.ndarray:
    limits = []
    if cosine_budget is not None:
        if not 0.0 < cosine_budget < 1.0:
            raise DTCError(f"cosine_budget must be in (0, 1), got {cosine_budget}")
        # ‖x − x̂‖² ≤ (1 − (1−δ)²)·‖x‖² guarantees cos(x, x̂) ≥ 1 − δ whatever the error's direction
        limits.append(1.0 - (1.0 - cosine_budget) ** 2)
    if rel_l2_budget is not None:
        if not rel_l2_budget > 0.0:
            raise DTCError(f"rel_l2_budget must be > 0, got {rel_l2_budget}")
        limits.append(rel_l2_budget**2)
    if not limits and byte_budget is None:
        raise DTCError("adaptive bits need an error budget (cosine_budget / rel_l2_budget) or a byte_budget")
    candidates = (*BITS_CHOICES, LOSSLESS_BITS)
    n_chunks = rows.shape[0]
    err = np.zeros((n_chunks, len(candidates)), dtype=np.float64)
    cost = np.zeros((n_chunks, len(candidates)), dtype=np.float64)
    for j, b in enumerate(candidates):
        cost[:, j] = (counts * b + 7) // 8
        if b == LOSSLESS_BITS:
            continue
        scale = _scales(amax, b)
        err[:, j] = _sq_error(rows, _quantize(rows, scale, b, noise), scale)
    norm2 = float(np.einsum("i,i->", rows.ravel(), rows.ravel(), dtype=np.float64))
    err_limit = min(limits) * norm2 if limits else None
    byte_limit = None if byte_budget is None else max(byte_budget - fixed_overhead, 0)
    if norm2 == 0.0:  # an all-zero array: every width is exact, take the smallest
        return np.full(n_chunks, BITS_CHOICES[0], dtype=np.uint8)
    if allocation == "chunk" and limits:  # each chunk on its own: fewest bits with err_c ≤ budget·‖x_c‖²
        chunk_norm2 = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
        choice = np.argmax(err <= min(limits) * chunk_norm2[:, None], axis=1)  # 32 (exact) always qualifies
        if byte_limit is not None and cost[np.arange(n_chunks), choice].sum() > byte_limit:
            choice = _choose_bits(err, cost, None, byte_limit)
    else:
        choice = _choose_bits(err, cost, err_limit, byte_limit)
    return np.asarray(candidates, dtype=np.uint8)[choice]


def _assemble(
    shape: tuple[int, ...],
    rows: np.ndarray,
    amax: np.ndarray,
    counts: np.ndarray,
    chunk_bits: np.ndarray,
    noise: np.ndarray | None,
    block_size: int,
    stochastic: bool,
    level: int,
) -> bytes:
    n_chunks = rows.shape[0]
    scales = np.zeros(n_chunks, dtype="<f4")
    lengths = (counts * chunk_bits.astype(np.int64) + 7) // 8
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    data = np.empty(int(lengths.sum()), dtype=np.uint8)
    for b in np.unique(chunk_bits):
        b = int(b)
        idx = np.flatnonzero(chunk_bits == b)
        if b == LOSSLESS_BITS:
            packed = rows[idx].astype("<f4").view(np.uint8)
        else:
            s = _scales(amax[idx], b)
            scales[idx] = s
            q = _quantize(rows[idx], s, b, None if noise is None else noise[idx])
            packed = pack_codes(_zigzag(q), b)
        full = counts[idx] == block_size
        row_len = block_size * b // 8
        data[(offsets[idx[full]][:, None] + np.arange(row_len)).ravel()] = packed[full].ravel()
        for r in np.flatnonzero(~full):  # the last, partial chunk
            c = int(idx[r])
            data[offsets[c] : offsets[c] + lengths[c]] = packed[r, : lengths[c]]
    body = chunk_bits.astype(np.uint8).tobytes() + scales.tobytes() + data.tobytes()
    payload, flags = body, FLAG_STOCHASTIC if stochastic else 0
    if body:
        compressed = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False).compress(body)
        if len(compressed) < len(body):
            payload, flags = compressed, flags | FLAG_ZSTD
    head = _TENSOR_FIXED.pack(
        MAGIC, VERSION, KIND_TENSOR, DTYPE_FLOAT32, flags, len(shape), SCALE_FLOAT32, 0, block_size
    )
    head += struct.pack(f"<{len(shape)}Q", *shape)
    head += struct.pack("<II", len(body), len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def decode(frame: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """Decode a tensor frame into a float32 array of its original shape; any malformed field raises DTCError."""
    header, body = _open_tensor_frame(frame, max_elements)
    shape, block_size, n, n_chunks = header.shape, header.block_size, header.n, header.n_chunks
    bits = np.frombuffer(body, dtype=np.uint8, count=n_chunks)
    bad = ~np.isin(bits, np.asarray(VALID_BITS, dtype=np.uint8))
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise DTCError(f"chunk {c} has invalid bit width {int(bits[c])} (valid: {VALID_BITS})")
    scales = np.frombuffer(body, dtype="<f4", count=n_chunks, offset=n_chunks).astype(np.float32)
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise DTCError("frame has a negative, NaN or Inf chunk scale")
    if (scales[bits == LOSSLESS_BITS] != 0).any():
        raise DTCError("frame has a nonzero scale on a raw float32 chunk")
    rem = n - (n_chunks - 1) * block_size if n_chunks else 0
    counts = np.full(n_chunks, block_size, dtype=np.int64)
    if n_chunks:
        counts[-1] = rem
    lengths = (counts * bits.astype(np.int64) + 7) // 8
    data_off = 5 * n_chunks
    if data_off + int(lengths.sum()) != len(body):
        raise DTCError(f"frame body has {len(body) - data_off} data bytes, its bit table needs {int(lengths.sum())}")
    data = np.frombuffer(body, dtype=np.uint8)
    offsets = data_off + np.concatenate(([0], np.cumsum(lengths)[:-1])) if n_chunks else np.zeros(0, np.int64)
    out = np.empty((n_chunks, block_size), dtype=np.float32)
    for b in np.unique(bits):
        b = int(b)
        idx = np.flatnonzero(bits == b)
        row_len = block_size * b // 8
        gathered = np.zeros((len(idx), row_len), dtype=np.uint8)
        full = idx[counts[idx] == block_size]
        nfull = len(full)
        if nfull:
            gathered[:nfull] = data[offsets[full][:, None] + np.arange(row_len)]
        if nfull < len(idx):  # the last, partial chunk: zero-padded to a full row
            c = int(idx[-1])
            gathered[nfull, : lengths[c]] = data[offsets[c] : offsets[c] + lengths[c]]
        order = np.concatenate((full, idx[nfull:]))
        if b == LOSSLESS_BITS:
            values = gathered.view("<f4").astype(np.float32)
            if not np.isfinite(values).all():
                raise DTCError("frame has a NaN or Inf raw float32 value")
            out[order] = values
            continue
        # |float32(q)| ≤ 2^(b−1) − 1 (the top code is refused below): a scale whose product with it overflows float32
        # is no encoder's (its scale is max|x| / that bound), and would decode to ±inf
        if (scales[idx].astype(np.float64) * _qmax(b) > np.finfo(np.float32).max).any():
            raise DTCError(f"frame has a {b}-bit chunk whose scale overflows float32")
        codes = unpack_codes(gathered, b, block_size)
        if codes.max(initial=0) == (1 << b) - 1:
            raise DTCError(f"frame has an out-of-range {b}-bit code")
        if nfull < len(idx) and codes[-1, rem:].any():
            raise DTCError("frame has nonzero padding bits after the last value")
        out[order] = _code_values(b)[codes] * scales[order][:, None]  # = float32(q) · scale, as §3 says
    return out.reshape(-1)[:n].reshape(shape)


@dataclass(frozen=True)
class _TensorHeader:
    shape: tuple[int, ...]
    block_size: int
    flags: int
    n: int
    n_chunks: int
    frame_bytes: int


def _open_tensor_frame(frame: bytes, max_elements: int) -> tuple[_TensorHeader, bytes]:
    """Validate the header and checksum, then return the (decompressed) body; allocation is capped first."""
    frame = _as_bytes(frame)
    _check_prefix(frame, KIND_TENSOR)
    if len(frame) < _TENSOR_FIXED.size:
        raise DTCError(f"truncated frame: {len(frame)} bytes, the fixed header alone needs {_TENSOR_FIXED.size}")
    _, _, _, dtype, flags, ndim, scale_format, reserved, block_size = _TENSOR_FIXED.unpack_from(frame)
    if dtype != DTYPE_FLOAT32:
        raise DTCError(f"unsupported dtype code {dtype} (only {DTYPE_FLOAT32} = float32)")
    if flags & ~(FLAG_STOCHASTIC | FLAG_ZSTD):
        raise DTCError(f"unknown flag bits 0x{flags:02x}")
    if ndim > MAX_NDIM:
        raise DTCError(f"frame declares {ndim} dimensions, at most {MAX_NDIM} are supported")
    if scale_format != SCALE_FLOAT32:
        raise DTCError(f"unsupported scale format {scale_format} (only {SCALE_FLOAT32} = float32)")
    if reserved != 0:
        raise DTCError("reserved header field is not zero")
    if not (8 <= block_size <= MAX_BLOCK_SIZE and block_size % 8 == 0):
        raise DTCError(f"invalid block size {block_size}")
    header_len = _TENSOR_FIXED.size + 8 * ndim + _TENSOR_TAIL.size
    if len(frame) < header_len:
        raise DTCError(f"truncated frame: {len(frame)} bytes, the header needs {header_len}")
    shape = struct.unpack_from(f"<{ndim}Q", frame, _TENSOR_FIXED.size)
    n = math.prod(shape)
    if any(d > max(max_elements, 1) for d in shape):
        raise DTCError(f"frame declares shape {shape}: a dimension is over the limit of {max_elements} elements")
    if n > max_elements:
        raise DTCError(f"frame declares shape {shape} = {n} elements, over the limit of {max_elements}")
    body_len, payload_len, crc = _TENSOR_TAIL.unpack_from(frame, header_len - _TENSOR_TAIL.size)
    if len(frame) != header_len + payload_len:
        raise DTCError(
            f"frame is {len(frame)} bytes, its header says {header_len + payload_len}"
            + (" (truncated)" if len(frame) < header_len + payload_len else " (trailing bytes)")
        )
    if zlib.crc32(frame[header_len:], zlib.crc32(frame[: header_len - 4])) != crc:
        raise DTCError("checksum mismatch: the frame is corrupted")
    n_chunks = -(-n // block_size)
    max_body = 5 * n_chunks + 4 * n
    min_body = 5 * n_chunks + (n // block_size) * block_size // 4 + _chunk_bytes(2, n % block_size)
    if not min_body <= body_len <= max_body:
        raise DTCError(f"body length {body_len} is impossible for {n} values in {n_chunks} chunks")
    payload = frame[header_len:]
    body = _inflate(payload, body_len) if flags & FLAG_ZSTD else payload
    if len(body) != body_len:
        raise DTCError(f"body is {len(body)} bytes, the header says {body_len}")
    return _TensorHeader(tuple(shape), block_size, flags, n, n_chunks, len(frame)), body


def inspect_frame(frame: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> FrameInfo:
    """Header and per-chunk bits of a tensor frame (validated like ``decode``, without dequantizing)."""
    header, body = _open_tensor_frame(frame, max_elements)
    bits = np.frombuffer(body, dtype=np.uint8, count=header.n_chunks).copy()
    return FrameInfo(
        header.shape,
        header.block_size,
        bits,
        header.frame_bytes,
        len(body),
        bool(header.flags & FLAG_ZSTD),
        bool(header.flags & FLAG_STOCHASTIC),
    )
