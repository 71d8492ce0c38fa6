"""Eager PyTorch backend: the fp32 reference the exported graphs are checked against (torch imported lazily)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cooperllm.manifest import Manifest
from cooperllm.tokenization import EncodedBatch
from device_runtime.backends.base import BackendError, GraphBackend

log = logging.getLogger(__name__)


class EagerBackend(GraphBackend):
    name = "eager"

    def __init__(self, manifest: Manifest, folder: Path, model_dir: str | Path, batch_size: int, seq_len: int):
        super().__init__(manifest, folder, None)
        import torch

        from cooperllm.modeling import build_task_model
        from cooperllm.models import load_causal_lm, resolve_model
        from cooperllm.tokenization import PromptEncoder

        self._torch = torch
        self.batch_size, self.seq_len = batch_size, seq_len
        lm = load_causal_lm(resolve_model(model_dir))
        encoder = PromptEncoder.for_artifacts(folder, manifest)
        self.module, layout = build_task_model(lm, encoder, manifest.adapter)
        if layout.to_dict() != manifest.layout.to_dict():
            raise BackendError(f"model {model_dir} does not produce the manifest's θ layout")

    def _run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        torch = self._torch
        from cooperllm.modeling import theta_to_tensors

        params = theta_to_tensors(theta, self.layout)
        with torch.inference_mode():
            loss, logits = torch.func.functional_call(
                self.module,
                params,
                (
                    torch.from_numpy(batch.input_ids),
                    torch.from_numpy(batch.attention_mask),
                    torch.from_numpy(batch.labels),
                ),
                strict=False,
            )
        return float(loss), logits.numpy().copy()
