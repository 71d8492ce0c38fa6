"""DTC's numeric core: bit packing of zig-zag codes, per-chunk symmetric quantization, and the choice of each chunk's
bit width under an error or byte budget. Pure numpy; no framing."""

from __future__ import annotations

import functools
import math

import numpy as np

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
