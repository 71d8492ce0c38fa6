"""ExecuTorch backend through the torch-free native runner (C++ library, ctypes): the device default for ``.pte``.

Unlike ``executorch_backend`` (ExecuTorch's Python runtime, which loads libtorch), this process never imports torch:
only libcooperllm_et.so and the executorch wheel's runtime, kernel and XNNPACK libraries are loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cooperllm.manifest import GraphSpec, Manifest
from cooperllm.tokenization import EncodedBatch
from device_runtime.backends.base import BackendError, GraphBackend
from device_runtime.native.binding import NativeRunner, NativeRunnerError, set_threads

log = logging.getLogger(__name__)


class NativeBackend(GraphBackend):
    name = "native"

    def __init__(self, manifest: Manifest, folder: Path, graph: GraphSpec, threads: int | None = None):
        super().__init__(manifest, folder, graph)

        path = self.folder / graph.file
        try:
            if threads:
                set_threads(threads)
            self.runner = NativeRunner(path)
        except NativeRunnerError as exc:
            raise BackendError(f"native ExecuTorch runner cannot load {path}: {exc}") from exc
        expected = len(manifest.input_names)
        if len(self.runner.input_specs) != expected:
            raise BackendError(f"{path.name} has {len(self.runner.input_specs)} inputs, the manifest lists {expected}")
        self._error = NativeRunnerError

    def _run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        arrays = [batch.input_ids, batch.attention_mask, batch.labels, *self.layout.unflatten(theta).values()]
        try:
            return self.runner.run(arrays)
        except self._error as exc:
            raise BackendError(str(exc)) from exc
