"""DTC codec: framed, versioned, adaptively quantized float tensors and batched ZO reports for the wire.

Guidance bases, adapters and report batches cross a phone's link many times per round, so they travel as compact
frames instead of float32 arrays: per-chunk symmetric quantization with the fewest bits that keep an error budget
(cosine or relative L2), bit-packed zig-zag codes, zstd. Decoding is a fixed sequence of float32 multiplies, so every
receiver (Python, the server's replay, the Android core) gets the same array bit for bit. Every field of a frame is
validated before anything is allocated from it; nothing is ever unpickled. The byte layout is ``docs/DTC.md``.
Torch-free: numpy and zstandard only.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from cooperllm.zgr import Report

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
_TENSOR_FIXED = struct.Struct("<4sBBBBBBHI")  # magic version kind dtype flags ndim scale_format reserved block_size
_TENSOR_TAIL = struct.Struct("<III")  # body_len, payload_len, crc32
_REPORTS_HEADER = struct.Struct("<4sBBBBIIII")  # magic version kind scalar_format flags count body payload crc
_U64_MAX = (1 << 64) - 1
_MAX_SEED = (1 << 63) - 1


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
# bit packing: code i of a chunk occupies bits [b·i, b·i + b) of an LSB-first bit stream (bit t = bit t%8 of byte t//8)


def _group(bits: int) -> tuple[int, int]:
    """(codes, bytes) per packing group: the smallest whole number of codes that fills whole bytes."""
    lcm = bits * 8 // math.gcd(bits, 8)
    return lcm // bits, lcm // 8


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack rows of unsigned codes (R, L) with L a multiple of 8 into (R, L·bits/8) bytes, vectorised."""
    rows, length = codes.shape
    if bits == 8:
        return codes.astype(np.uint8)
    if bits == 16:
        return codes.astype("<u2").view(np.uint8).reshape(rows, length * 2)
    k, g = _group(bits)
    grouped = codes.astype(np.uint32).reshape(rows, length // k, k)
    word = np.zeros(grouped.shape[:2], dtype=np.uint32)
    for j in range(k):
        word |= grouped[:, :, j] << np.uint32(bits * j)
    out = np.empty((*word.shape, g), dtype=np.uint8)
    for i in range(g):
        out[:, :, i] = (word >> np.uint32(8 * i)) & np.uint32(0xFF)
    return out.reshape(rows, length * bits // 8)


def unpack_codes(data: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of ``pack_codes``: (R, length·bits/8) bytes into (R, length) uint32 codes."""
    rows = data.shape[0]
    if bits == 8:
        return data.astype(np.uint32)
    if bits == 16:
        return np.ascontiguousarray(data).view("<u2").astype(np.uint32).reshape(rows, length)
    k, g = _group(bits)
    grouped = data.reshape(rows, length // k, g).astype(np.uint32)
    word = np.zeros(grouped.shape[:2], dtype=np.uint32)
    for i in range(g):
        word |= grouped[:, :, i] << np.uint32(8 * i)
    mask = np.uint32((1 << bits) - 1)
    out = np.empty((rows, length // k, k), dtype=np.uint32)
    for j in range(k):
        out[:, :, j] = (word >> np.uint32(bits * j)) & mask
    return out.reshape(rows, length)


def _zigzag(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.int32, copy=False)
    return ((q << 1) ^ (q >> 31)).view(np.uint32)


@functools.cache
def _code_values(bits: int) -> np.ndarray:
    """float32(q) for every b-bit zig-zag code u: a table lookup replaces the integer decode."""
    u = np.arange(1 << bits, dtype=np.int64)
    return ((u >> 1) ^ -(u & 1)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# quantization


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _scales(amax: np.ndarray, bits: int) -> np.ndarray:
    """float32 step per chunk: max|x| maps to the largest code, so nothing is ever clipped."""
    return (amax / np.float32(_qmax(bits))).astype(np.float32)


def _quantize(x: np.ndarray, scale: np.ndarray, bits: int, noise: np.ndarray | None) -> np.ndarray:
    """Codes q in [−qmax, qmax] for rows of x, as integral float32 (= float32(q) exactly); stochastic when ``noise``
    (U[0,1)) is given: floor(x/scale + u) is unbiased. In place where possible: this runs once per candidate width."""
    qmax = _qmax(bits)
    zero = scale == 0
    y = x / np.where(zero, np.float32(1.0), scale)[:, None]
    if noise is not None:
        y += noise
        np.floor(y, out=y)
    else:
        np.rint(y, out=y)
    np.clip(y, -qmax, qmax, out=y)
    if zero.any():
        y[zero] = 0
    return y


def _sq_error(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Σ (x − x̂)² per row, with x̂ = q · scale computed as the decoder does (float32)."""
    d = q * scale[:, None]
    d -= x
    return np.einsum("ij,ij->i", d, d, dtype=np.float64)


def _chunk_bytes(bits: int, count: int) -> int:
    return (count * bits + 7) // 8


# ----------------------------------------------------------------------------------------------------------------
# bit allocation


def _choose_bits(err: np.ndarray, cost: np.ndarray, err_limit: float | None, byte_limit: int | None) -> np.ndarray:
    """Index into the candidate list per chunk: fewest bytes with Σerr ≤ err_limit, then fit Σbytes ≤ byte_limit.

    Lagrangian allocation (minimise bytes + μ·err per chunk, bisect μ) followed by a greedy pass that spends the
    remaining error slack on the cheapest downgrades: across chunks, not chunk by chunk, so flat chunks get few bits.
    """
    rows = np.arange(err.shape[0])
    errn = err / (err_limit if err_limit else max(float(err.max()), 1e-30))

    def pick(log_mu: float) -> np.ndarray:
        return np.argmin(cost + (2.0**log_mu) * errn, axis=1)  # ties: the first (fewest bits) wins

    def bisect(ok, lo: float = -80.0, hi: float = 80.0) -> tuple[float, float]:
        """(lo, hi) around the boundary where ``ok(log μ)`` flips from False to True (True at hi)."""
        for _ in range(30):  # log2 μ to within 1.5e-7; the slack pass closes the rest
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return lo, hi

    choice = np.full(err.shape[0], err.shape[1] - 1)
    if err_limit is not None:
        lo, hi = bisect(lambda m: errn[rows, pick(m)].sum() <= 1.0)
        choice = _spend_slack(pick(hi), pick(lo), errn, cost, 1.0)
    if byte_limit is not None and cost[rows, choice].sum() > byte_limit:
        if cost[:, 0].sum() > byte_limit:
            return np.zeros(err.shape[0], dtype=np.int64)  # the smallest; zstd may still bring it under the cap
        lo, _ = bisect(lambda m: cost[rows, pick(m)].sum() > byte_limit)
        choice = pick(lo)
    return choice


def _spend_slack(
    choice: np.ndarray, cheaper: np.ndarray, errn: np.ndarray, cost: np.ndarray, limit: float
) -> np.ndarray:
    """Greedily move chunks from ``choice`` to the cheaper ``cheaper`` option while Σerr stays within ``limit``."""
    rows = np.arange(len(choice))
    total = errn[rows, choice].sum()
    movable = np.flatnonzero(cheaper != choice)
    if not len(movable):
        return choice
    d_err = errn[movable, cheaper[movable]] - errn[movable, choice[movable]]
    d_cost = cost[movable, choice[movable]] - cost[movable, cheaper[movable]]
    order = np.argsort(d_err / np.maximum(d_cost, 1e-12), kind="stable")
    out = choice.copy()
    for i in order:
        if total + d_err[i] > limit:
            break
        total += d_err[i]
        out[movable[i]] = cheaper[movable[i]]
    return out


# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
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
