"""Eager PyTorch backend: the fp32 reference the exported graphs are checked against (torch imported lazily)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cooperllm.manifest import Manifest
from cooperllm.models import load_causal_lm, resolve_model
from cooperllm.tokenization import EncodedBatch, PromptEncoder
from device_runtime.backends.base import BackendError, GraphBackend

log = logging.getLogger(__name__)


class EagerBackend(GraphBackend):
    name = "eager"

    def __init__(self, manifest: Manifest, folder: Path, model_dir: str | Path, batch_size: int, seq_len: int):
        super().__init__(manifest, folder, None)
        from cooperllm.modeling import build_task_model, forward_at  # imports torch: only an eager session pays for it

        self._forward = forward_at
        self.batch_size, self.seq_len = batch_size, seq_len
        self.lengths = (seq_len,)  # eager runs any length; the reference keeps the artifact's full one
        lm = load_causal_lm(resolve_model(model_dir))
        encoder = PromptEncoder.for_artifacts(folder, manifest)
        self.module, layout = build_task_model(lm, encoder, manifest.adapter)
        if layout.to_dict() != manifest.layout.to_dict():
            raise BackendError(f"model {model_dir} does not produce the manifest's θ layout")

    def _run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        return self._forward(self.module, self.layout, batch, theta)
