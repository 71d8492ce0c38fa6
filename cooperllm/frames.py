"""Tensor frames on the wire: the one place that picks the format (DTC, lossy and adaptive, or a plain float32 frame
where a tensor must cross losslessly) and the decoder that recognises both, so a device never needs to know which one
the server sent. Every field is validated before anything is allocated from it; nothing is unpickled."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from cooperllm import dtc


class FrameError(ValueError):
    """A tensor frame that cannot be decoded safely; the message says which field."""


PLAIN_MAGIC = b"CLTF"
PLAIN_VERSION = 1
_DTYPE_F32 = 1
_HEADER = struct.Struct("<4sBBBB")  # magic, version, dtype, ndim, reserved
DEFAULT_MAX_ELEMENTS = 1 << 28


def encode_plain_frame(array: np.ndarray) -> bytes:
    """magic 'CLTF', version, dtype (1 = float32), ndim, 0, ndim × uint32 dims, crc32 of payload, payload (LE f32)."""
    arr = np.ascontiguousarray(array, dtype="<f4")
    if arr.ndim > 8:
        raise FrameError(f"frames carry at most 8 dimensions, got {arr.ndim}")
    payload = arr.tobytes()
    head = _HEADER.pack(PLAIN_MAGIC, PLAIN_VERSION, _DTYPE_F32, arr.ndim, 0)
    dims = struct.pack(f"<{arr.ndim}I", *arr.shape)
    return head + dims + struct.pack("<I", zlib.crc32(payload)) + payload


def decode_plain_frame(frame: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    if len(frame) < _HEADER.size:
        raise FrameError("frame shorter than its header")
    magic, version, dtype, ndim, _ = _HEADER.unpack_from(frame)
    if magic != PLAIN_MAGIC:
        raise FrameError("not a plain tensor frame (bad magic)")
    if version != PLAIN_VERSION:
        raise FrameError(f"unsupported plain frame version {version}")
    if dtype != _DTYPE_F32:
        raise FrameError(f"unsupported frame dtype code {dtype}")
    if ndim > 8:
        raise FrameError(f"frame declares {ndim} dimensions (max 8)")
    off = _HEADER.size
    if len(frame) < off + 4 * ndim + 4:
        raise FrameError("frame truncated in its shape")
    shape = struct.unpack_from(f"<{ndim}I", frame, off)
    off += 4 * ndim
    (crc,) = struct.unpack_from("<I", frame, off)
    off += 4
    n = math.prod(shape)
    if n > max_elements:
        raise FrameError(f"frame holds {n} elements, more than the allowed {max_elements}")
    payload = frame[off:]
    if len(payload) != 4 * n:
        raise FrameError(f"frame payload is {len(payload)} bytes, shape {shape} needs {4 * n}")
    if zlib.crc32(payload) != crc:
        raise FrameError("frame checksum mismatch")
    arr = np.frombuffer(payload, dtype="<f4").astype(np.float32).reshape(shape)
    if not np.isfinite(arr).all():
        raise FrameError("frame contains NaN or Inf")
    return arr


def encode_tensor_frame(array: np.ndarray, *, lossless: bool = False) -> bytes:
    """The one place that picks the wire format: DTC (lossy, adaptive quantization), or plain f32 if ``lossless``."""
    if lossless:
        return encode_plain_frame(array)
    return dtc.encode(np.ascontiguousarray(array, dtype=np.float32))


def decode_tensor_frame(frame: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """Decode a plain or DTC frame into a float32 array; any malformed input raises :class:`FrameError`."""
    frame = bytes(frame)
    if frame[:4] == PLAIN_MAGIC:
        return decode_plain_frame(frame, max_elements)
    try:
        arr = dtc.decode(frame, max_elements=max_elements)
    except ValueError as exc:
        raise FrameError(f"malformed DTC frame: {exc}") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise FrameError("frame contains NaN or Inf")
    return arr
