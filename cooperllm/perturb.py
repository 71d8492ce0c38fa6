"""Portable perturbations: the same z on a phone, in Python and on the server.

The generator is specified in ``docs/PERTURBATIONS.md`` precisely enough to be re-implemented bit for bit
(the Android core does). Everything here is integer-exact or a fixed sequence of IEEE float32 operations, so a
device that replays a round gets the server's θ to the last bit.
"""

from __future__ import annotations

import enum
import math

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
MAX_SEED = (1 << 63) - 1

STREAM_ISO = 0
STREAM_XI = 1

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GAMMA = np.uint64(GAMMA)


def mix64(x: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2^64)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def stream_key(seed: int, block: int, stream: int = STREAM_ISO) -> int:
    """Key of the SplitMix64 stream for (seed, block, stream); distinct inputs give independent streams."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2^63-1], got {seed}")
    if not 0 <= block < (1 << 32):
        raise ValueError(f"block must be in [0, 2^32), got {block}")
    if stream not in (STREAM_ISO, STREAM_XI):
        raise ValueError(f"stream must be {STREAM_ISO} or {STREAM_XI}, got {stream}")
    k = mix64(seed + GAMMA)
    k = mix64(k ^ ((block + GAMMA) & MASK64))
    return mix64(k ^ ((stream + GAMMA) & MASK64))


def _mix64_array(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def stream_words(key: int, n_words: int) -> np.ndarray:
    """Words j = 0..n_words-1 of the SplitMix64 stream whose state starts at ``key``: mix64(key + (j+1)·γ)."""
    with np.errstate(over="ignore"):
        j = np.arange(1, n_words + 1, dtype=np.uint64)
        state = np.uint64(key) + j * _GAMMA
        return _mix64_array(state)


def rademacher(seed: int, block: int, n: int, stream: int = STREAM_ISO) -> np.ndarray:
    """n entries in {+1, -1} (int8): entry i is bit (i mod 64) of word i div 64; bit 0 → +1, bit 1 → −1."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    words = stream_words(stream_key(seed, block, stream), (n + 63) // 64)
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:n]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8, copy=False)


def combine_columns(basis: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_k w_k · V[:, k] in float32, summed in column order k = 0, 1, … (fixed order, no BLAS)."""
    basis = np.asarray(basis, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if basis.ndim != 2 or basis.shape[1] != weights.shape[0]:
        raise ValueError(f"basis {basis.shape} does not match {weights.shape[0]} weights")
    out = np.zeros(basis.shape[0], dtype=np.float32)
    for k in range(basis.shape[1]):
        out += weights[k] * basis[:, k]
    return out


class Direction(enum.IntEnum):
    """The kinds of direction a measurement perturbs along (docs/PERTURBATIONS.md §4).

    ``ISO``: plain Rademacher z (no guidance). ``SUBSPACE``: u_V = s·V ξ, inside the cloud's guidance subspace, with
    s = √(n/m) so that ‖u_V‖² = n like a Rademacher vector's. ``COMPLEMENT``: u_⊥ = z − V(Vᵀz), the Rademacher z with
    its component in the subspace removed. Measuring the two guided kinds separately keeps each estimate unbiased and
    readable on its own, which the v1 mixture of both in one direction did not.
    """

    ISO = 0
    SUBSPACE = 1
    COMPLEMENT = 2


def subspace_scale(n: int, m: int) -> np.float32:
    """s = √(n/m) as float32 (binary64, rounded once): u_V = s·Vξ has the squared norm n of a Rademacher z."""
    if m <= 0 or n <= 0:
        raise ValueError(f"a subspace needs n > 0 and m > 0, got n={n}, m={m}")
    return np.float32(math.sqrt(n / m))


def project_coefficients(basis: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Vᵀz as float32: each coefficient summed in binary64 in row order i = 0 … n−1, rounded once (portable: a
    sequential sum, not BLAS, whose order varies by platform)."""
    terms = np.asarray(basis, dtype=np.float64) * np.asarray(z, dtype=np.float64)[:, None]
    return np.cumsum(terms, axis=0)[-1].astype(np.float32) if terms.shape[0] else np.zeros(terms.shape[1], np.float32)


def direction(seed: int, block: int, n: int, kind: Direction, basis: np.ndarray | None = None) -> np.ndarray:
    """The direction u(seed, block) of the given kind, float32 of length n (the guided kinds need the block's basis)."""
    kind = Direction(kind)
    if kind is Direction.ISO:
        return rademacher(seed, block, n, STREAM_ISO).astype(np.float32)
    if basis is None:
        raise ValueError(f"a {kind.name.lower()} direction needs the block's guidance basis")
    basis = np.asarray(basis, dtype=np.float32)
    if basis.ndim != 2 or basis.shape[0] != n:
        raise ValueError(f"basis of shape {basis.shape} does not match a block of {n} values")
    m = basis.shape[1]
    if kind is Direction.SUBSPACE:
        xi = rademacher(seed, block, m, STREAM_XI).astype(np.float32)
        return subspace_scale(n, m) * combine_columns(basis, xi)
    z = rademacher(seed, block, n, STREAM_ISO).astype(np.float32)
    return z - combine_columns(basis, project_coefficients(basis, z))


def add_direction(
    out: np.ndarray, coef: float, seed: int, block: int, kind: Direction, basis: np.ndarray | None = None
) -> None:
    """out += float32(coef) · u(seed, block), in place: the one primitive behind perturb, restore and replay."""
    if out.dtype != np.float32 or out.ndim != 1:
        raise ValueError("out must be a 1-D float32 array")
    out += np.float32(coef) * direction(seed, block, out.shape[0], kind, basis)
