"""ExecuTorch backend through its Python runtime (which loads libtorch; the torch-free native runner replaces it)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cooperllm.manifest import GraphSpec, Manifest
from cooperllm.tokenization import EncodedBatch
from device_runtime.backends.base import BackendError, GraphBackend

log = logging.getLogger(__name__)


class ExecuTorchBackend(GraphBackend):
    name = "executorch"

    def __init__(self, manifest: Manifest, folder: Path, graph: GraphSpec):
        super().__init__(manifest, folder, graph)
        import torch  # noqa: F401  (the Python runtime's tensors)
        from executorch.runtime import Runtime  # deferred: loads executorch (heavy; not needed at import)

        path = self.folder / graph.file
        try:
            program = Runtime.get().load_program(path)
            self.method = program.load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError/ValueError with an error code
            raise BackendError(f"ExecuTorch cannot load {path}: {exc}") from exc
        if self.method is None:
            raise BackendError(f"{path.name} has no 'forward' method")

    def _run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        import torch  # deferred: loads torch (heavy; not needed at import)

        arrays = [batch.input_ids, batch.attention_mask, batch.labels, *self.layout.unflatten(theta).values()]
        inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        outputs = self.method.execute(inputs)
        loss, logits = outputs[0], outputs[1]
        return float(loss.reshape(()).item()), logits.detach().numpy().copy()
