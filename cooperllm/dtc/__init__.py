"""DTC codec: framed, versioned, adaptively quantized float tensors and batched ZO reports for the wire.

Guidance bases, adapters and report batches cross a phone's link many times per round, so they travel as compact
frames instead of float32 arrays: per-chunk symmetric quantization with the fewest bits that keep an error budget
(cosine or relative L2), bit-packed zig-zag codes, zstd. Decoding is a fixed sequence of float32 multiplies, so every
receiver (Python, the server's replay, the Android core) gets the same array bit for bit. Every field of a frame is
validated before anything is allocated from it; nothing is ever unpickled. The byte layout is ``docs/DTC.md``.
Torch-free: numpy and zstandard only.

Modules: ``wire`` (constants, errors, the frame prefix and bounded inflate), ``codes`` (bit packing, quantization,
bit-width choice), ``tensor`` (tensor frames), ``reports`` (report batches). This package's namespace is the API.
"""

from cooperllm.dtc.codes import pack_codes, unpack_codes
from cooperllm.dtc.reports import decode_reports, encode_reports
from cooperllm.dtc.tensor import decode, encode, inspect_frame
from cooperllm.dtc.wire import (
    BITS_CHOICES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LEVEL,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_REPORTS,
    DTYPE_FLOAT32,
    FLAG_STOCHASTIC,
    FLAG_ZSTD,
    KIND_REPORTS,
    KIND_TENSOR,
    LOSSLESS_BITS,
    MAGIC,
    MAX_BLOCK_SIZE,
    MAX_NDIM,
    SCALAR_FLOAT32,
    SCALAR_FLOAT64,
    SCALE_FLOAT32,
    VALID_BITS,
    VERSION,
    DTCError,
    FrameInfo,
)

__all__ = [
    "BITS_CHOICES",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_REPORTS",
    "DTYPE_FLOAT32",
    "FLAG_STOCHASTIC",
    "FLAG_ZSTD",
    "KIND_REPORTS",
    "KIND_TENSOR",
    "LOSSLESS_BITS",
    "MAGIC",
    "MAX_BLOCK_SIZE",
    "MAX_NDIM",
    "SCALAR_FLOAT32",
    "SCALAR_FLOAT64",
    "SCALE_FLOAT32",
    "VALID_BITS",
    "VERSION",
    "DTCError",
    "FrameInfo",
    "decode",
    "decode_reports",
    "encode",
    "encode_reports",
    "inspect_frame",
    "pack_codes",
    "unpack_codes",
]
