"""Run an exported artifact with its real runtime (ExecuTorch or ONNX Runtime) for export-time validation.

These runners serve the exporter's checks and the export benchmark; the device side has its own torch-free
backends. Both take numpy inputs in the manifest's order and return (loss, label_logits).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cooperllm.console import without_cpu_probe_lines

# ORT would fold in-graph dequantization back into fp32 constants (1.3–5.9 GB for SmolLM2): keep it off.
ORT_DISABLED_OPTIMIZERS = ("ConstantFolding",)


class OrtRunner:
    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort  # deferred: loads onnxruntime (heavy; not needed at import)

        opts = ort.SessionOptions()
        # no arena and no memory-pattern planning: SmolLM2 int8 peaks at ~506 MB instead of ~814 MB, same speed
        # (the arena keeps the per-call dequantized fp32 weights around)
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS)
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"graph takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {n: np.ascontiguousarray(a) for n, a in zip(self.input_names, inputs, strict=True)}
        loss, logits = self.session.run(None, feed)
        return _loss(loss), np.asarray(logits)


class PteRunner:
    """ExecuTorch's Python runtime (it imports libtorch; the torch-free native runner lives in device_runtime)."""

    def __init__(self, path: str | os.PathLike):
        from executorch.runtime import Runtime  # deferred: loads executorch (heavy; not needed at import)

        with without_cpu_probe_lines():
            self.program = Runtime.get().load_program(Path(path))
            self.method = self.program.load_method("forward")

    def __call__(self, inputs: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        import torch  # deferred: loads torch (heavy; not needed at import)

        loss, logits = self.method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        return _loss(loss.numpy()), logits.numpy().copy()


def _loss(value) -> float:
    """The graph's scalar loss as a Python float (a 0-d tensor from ExecuTorch, a 0-d array from ORT)."""
    return float(np.asarray(value, dtype=np.float64))


def open_runner(path: str | os.PathLike, fmt: str):
    if fmt == "onnx":
        return OrtRunner(path)
    if fmt == "pte":
        return PteRunner(path)
    raise ValueError(f"unknown graph format {fmt!r}")
