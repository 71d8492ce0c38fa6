"""The lossless θ delta frame (cooperllm.theta_delta): bit-exact round trips and a clear refusal of every malformed
frame."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import zstandard

from cooperllm import theta_delta as td
from cooperllm.layout import theta_checksum


def _random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 values with random bit patterns, NaN- and Inf-free (exponent 0xFF redrawn), subnormals and −0 kept."""
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    bad = (bits >> 23) & 0xFF == 0xFF
    bits[bad] &= ~np.uint32(1 << 30)  # exponent ≠ 0xFF
    theta = bits.view(np.float32)
    assert np.isfinite(theta).all()
    return theta


def _pair(seed: int = 0, n: int = 4099) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    old = rng.normal(0, 0.02, n).astype(np.float32)
    new = (old + rng.normal(0, 1e-4, n)).astype(np.float32)
    return old, new


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_is_bit_exact_on_random_bit_patterns(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20_000))
    old, new = _random_bits(rng, n), _random_bits(rng, n)
    new[: n // 3] = old[: n // 3]  # some values unchanged
    if n > 2:
        old[1], new[2] = -0.0, np.float32(1e-45)  # a signed zero and a subnormal travel as they are
    frame = td.encode(new, old, from_version=3, to_version=3 + seed)
    got = td.decode(frame, old, from_version=3, to_version=3 + seed)
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.array_equal(got.view(np.uint32), new.view(np.uint32))
    assert theta_checksum(got) == theta_checksum(new)
    head = td.read_header(frame)
    assert (head.n, head.from_version, head.to_version) == (n, 3, 3 + seed)
    assert (head.from_checksum, head.to_checksum) == (theta_checksum(old), theta_checksum(new))


def test_close_thetas_compress_below_their_raw_size():
    old, new = _pair(n=100_000)
    frame = td.encode(new, old, from_version=0, to_version=1)
    assert len(frame) < 0.9 * new.nbytes
    assert np.array_equal(td.decode(frame, old), new)
    same = td.encode(old, old, from_version=1, to_version=1)  # nothing changed: a few hundred bytes
    assert len(same) < 1000 and np.array_equal(td.decode(same, old), old)


def test_planes_shuffle_round_trip():
    words = np.arange(10, dtype="<u4") * 0x01020304
    planes = td.shuffle_planes(words)
    assert planes[:10] == bytes(words.view(np.uint8)[0::4])
    assert np.array_equal(td.unshuffle_planes(planes, 10), words)


def _reframe(frame: bytes, **fields) -> bytes:
    """The frame with header fields replaced (crc recomputed unless given)."""
    names = ("magic", "version", "flags", "reserved", "n", "v0", "v1", "sha0", "sha1", "payload_len", "crc")
    values = dict(zip(names, struct.unpack_from("<4sBBHIII32s32sII", frame), strict=True))
    payload = fields.pop("payload", frame[td.HEADER_SIZE :])
    values.update(payload_len=len(payload), crc=zlib.crc32(payload))
    values.update(fields)
    return struct.pack("<4sBBHIII32s32sII", *values.values()) + payload


@pytest.fixture(scope="module")
def frame_and_base():
    old, new = _pair()
    return td.encode(new, old, from_version=2, to_version=5), old


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: b"XXXX" + f[4:], "not a θ delta frame"),
        (lambda f: _reframe(f, magic=b"DTC1"), "not a θ delta frame"),
        (lambda f: _reframe(f, version=2), "unsupported θ delta version"),
        (lambda f: _reframe(f, flags=1), "reserved header bits"),
        (lambda f: f[: td.HEADER_SIZE - 1], "truncated delta frame"),
        (lambda f: f[:-10], "truncated"),
        (lambda f: f + b"\0", "carries"),
        (lambda f: _reframe(f, payload_len=1 << 31), "truncated"),  # oversized declared length
        (lambda f: _reframe(f, n=td.MAX_VALUES + 1), "at most"),  # oversized declared θ
        (lambda f: _reframe(f, n=0), "at most"),
        (lambda f: _reframe(f, n=4098), "the base θ has 4099"),  # wrong n
        (lambda f: _reframe(f, v0=6), "back to"),
        (lambda f: _reframe(f, crc=0), "crc32"),
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "crc32"),
        (lambda f: _reframe(f, sha0=b"\0" * 32), "base θ is not θ of version 2"),
        (lambda f: _reframe(f, sha1=b"\0" * 32), "does not match version 5"),
        (lambda f: _reframe(f, payload=b"not zstd at all"), "not a zstd frame"),
        (lambda f: _reframe(f, payload=zstandard.ZstdCompressor().compress(b"\0" * 4 * 4098)), "declares 16392"),
        (lambda f: _reframe(f, payload=zstandard.ZstdCompressor().compress(b"\0" * 4 * 4099) + b"x"), "corrupt"),
    ],
)
def test_malformed_frames_are_refused_with_a_clear_error(frame_and_base, change, message):
    frame, base = frame_and_base
    with pytest.raises(td.ThetaDeltaError, match=message):
        td.decode(change(frame), base)


def test_oversized_zstd_content_is_refused_before_decompressing(frame_and_base):
    """A payload that declares more bytes than the header's n allows (a zip bomb) is refused from its header."""
    frame, base = frame_and_base
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    with pytest.raises(td.ThetaDeltaError, match="declares 67108864 bytes"):
        td.decode(_reframe(frame, payload=bomb), base)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    no_size = streamed.compress(b"\0" * (1 << 20)) + streamed.flush()  # no declared size: refused as well
    with pytest.raises(td.ThetaDeltaError):
        td.decode(_reframe(frame, payload=no_size), base)


def test_decoder_checks_what_the_caller_expects(frame_and_base):
    frame, base = frame_and_base
    with pytest.raises(td.ThetaDeltaError, match="from version is 2, expected 1"):
        td.decode(frame, base, from_version=1)
    with pytest.raises(td.ThetaDeltaError, match="to version is 5, expected 4"):
        td.decode(frame, base, to_version=4)
    with pytest.raises(td.ThetaDeltaError, match="at most 100"):
        td.decode(frame, base, max_values=100)
    drifted = base.copy()
    drifted[7] = np.nextafter(drifted[7], np.float32(1))
    with pytest.raises(td.ThetaDeltaError, match="base θ is not"):
        td.decode(frame, drifted)
    assert isinstance(td.ThetaDeltaError("x"), ValueError)


def test_encoder_refuses_mismatched_sizes_and_versions():
    old, new = _pair()
    with pytest.raises(td.ThetaDeltaError, match="sizes differ"):
        td.encode(new[:-1], old, from_version=0, to_version=1)
    with pytest.raises(td.ThetaDeltaError, match="version"):
        td.encode(new, old, from_version=-1, to_version=1)


def test_bench_measures_every_gap_on_stored_versions(tmp_path):
    from cooperllm.checkpoint import save_theta
    from cooperllm.layout import ParamLayout
    from cooperllm_app.bench.adapter import adapter_files, measure

    layout = ParamLayout.build([("a", (64, 32), "b0"), ("b", (32, 64), "b1")])
    rng = np.random.default_rng(0)
    theta = rng.normal(0, 0.02, layout.total).astype(np.float32)
    for v in range(4):
        save_theta(tmp_path / f"v{v:06d}.safetensors", theta, layout)
        theta = (theta + rng.normal(0, 1e-4, layout.total)).astype(np.float32)
    (tmp_path / "notes.txt").write_text("not a version")
    files = adapter_files(tmp_path)
    assert list(files) == [0, 1, 2, 3]
    res = measure(files, layout, gaps=5)
    assert [(g["gap"], g["pairs"]) for g in res["gaps"]] == [(1, 3), (2, 2), (3, 1)]
    assert all(g["delta_bytes_mean"] < g["full_bytes"] for g in res["gaps"])
