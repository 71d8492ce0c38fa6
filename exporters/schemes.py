"""Quantization scheme names and the refusal of activation quantization (torch-free, so requests fail fast)."""

from __future__ import annotations

from exporters.errors import ExportError

QUANT_SCHEMES = ("none", "int8", "int4", "gguf-q4")  # gguf-q4: the source GGUF's own 4-bit blocks (gguf_q4.py)
INT4_GROUP_SIZE = 32
REFUSED_SCHEMES = {
    "8da4w": "XNNPACK 8-bit dynamic activations with 4-bit weights",
    "8da8w": "XNNPACK 8-bit dynamic activations with 8-bit weights",
    "dynamic": "dynamic activation quantization",
    "int8-dynamic": "dynamic activation quantization",
    "quantize_dynamic": "ONNX Runtime quantize_dynamic (dynamic int8 activations)",
    "qdq": "static activation quantization (QDQ)",
}
FD_FAILURE = (
    "quantizing activations rounds the loss in steps far larger than L(θ+εz) − L(θ−εz): the finite difference "
    "(L₊ − L₋)/2ε that zeroth-order training reads is then 3× to 1,200× wrong and gets worse as ε shrinks (a MeZO "
    "run on an 8da4w graph diverged, 5.1 → 13.4). Only frozen weights may be quantized: use --quant int8 or int4."
)


def check_scheme(quant: str) -> str:
    """The normalised scheme name, or an ExportError that says why activation schemes are refused."""
    name = str(quant).strip().lower()
    if name in REFUSED_SCHEMES:
        raise ExportError(f"quantization scheme {quant!r} ({REFUSED_SCHEMES[name]}) is refused: {FD_FAILURE}")
    if name not in QUANT_SCHEMES:
        raise ExportError(f"unknown quantization scheme {quant!r}; choose one of {', '.join(QUANT_SCHEMES)}")
    return name
