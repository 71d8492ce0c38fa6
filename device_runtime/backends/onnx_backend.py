"""ONNX Runtime backend (torch-free): the int8 graph dequantizes in-graph, so constant folding must stay off."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from cooperllm.manifest import GraphSpec, Manifest
from cooperllm.tokenization import EncodedBatch
from device_runtime.backends.base import BackendError, GraphBackend

log = logging.getLogger(__name__)


class OnnxBackend(GraphBackend):
    name = "onnx"

    def __init__(self, manifest: Manifest, folder: Path, graph: GraphSpec, threads: int | None = None):
        super().__init__(manifest, folder, graph)
        import onnxruntime as ort  # deferred: loads onnxruntime (heavy; not needed at import)

        opts = ort.SessionOptions()
        # Folding DequantizeLinear/Mul chains turns the int8 weights back into fp32 constants (1.3–5.9 GB, DESIGN §4).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.enable_cpu_mem_arena = False  # the arena keeps the peak of every transient tensor: a phone cannot
        opts.enable_mem_pattern = False
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        path = self.folder / graph.file
        try:
            self.session = ort.InferenceSession(
                os.fspath(path),
                sess_options=opts,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["ConstantFolding"],
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        names = [i.name for i in self.session.get_inputs()]
        if len(names) != len(manifest.input_names):
            raise BackendError(f"{path.name} has {len(names)} inputs, the manifest lists {len(manifest.input_names)}")
        # Feed by position: the manifest's order is the contract, the exporter may sanitise names.
        self._input_names = names
        outputs = [o.name for o in self.session.get_outputs()]
        if len(outputs) < 2:
            raise BackendError(f"{path.name} has outputs {outputs}, expected loss and label_logits")
        self._output_names = outputs[:2]

    def _run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        arrays = [batch.input_ids, batch.attention_mask, batch.labels, *self.layout.unflatten(theta).values()]
        feed = {name: np.ascontiguousarray(a) for name, a in zip(self._input_names, arrays, strict=True)}
        loss, logits = self.session.run(self._output_names, feed)
        return float(np.asarray(loss).reshape(())), logits
