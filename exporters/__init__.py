"""Exporters: HF causal LM → loss graph with the trainable tensors as inputs → quantized .pte / .onnx + manifest.

Importing this package is cheap (torch loads only when an export runs).
"""

from exporters.api import export_artifacts
from exporters.errors import ExportError

__all__ = ["ExportError", "export_artifacts"]
