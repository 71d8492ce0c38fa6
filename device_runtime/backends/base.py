"""The one small interface every graph backend implements: run the exported loss graph at a given θ."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from cooperllm.checkpoint import initial_theta
from cooperllm.manifest import GraphSpec, Manifest
from cooperllm.tokenization import EncodedBatch, fitting_length, last_tokens

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A graph that cannot be loaded or run; the message names the artifact and the reason."""


class GraphBackend(ABC):
    """``run(batch, θ) -> (mean CE loss, label logits (B, C))`` on fixed-shape batches of ``batch_size × seq_len``."""

    name: str = "?"

    def __init__(self, manifest: Manifest, folder: Path, graph: GraphSpec | None):
        self.manifest = manifest
        self.folder = Path(folder)
        self.graph = graph
        self.layout = manifest.layout
        self.batch_size = graph.batch_size if graph else 8
        self.seq_len = graph.seq_len if graph else 64
        self.lengths = graph.lengths if graph else (self.seq_len,)

    def run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        if theta.dtype != np.float32 or theta.shape != (self.layout.total,):
            raise BackendError(f"θ must be float32 of shape ({self.layout.total},), got {theta.dtype} {theta.shape}")
        shape = (self.batch_size, self.seq_len)
        if batch.input_ids.shape != shape or batch.attention_mask.shape != shape or batch.labels.shape != shape[:1]:
            raise BackendError(f"{self.name} graph takes batches of {shape[0]}×{shape[1]}, got {batch.input_ids.shape}")
        return self.run_at(batch, theta, self.length_for(batch))

    def run_at(self, batch: EncodedBatch, theta: np.ndarray, length: int) -> tuple[float, np.ndarray]:
        """``run`` in a given length bucket (one of ``lengths`` that holds the batch's longest row)."""
        if length not in self.lengths or length < fitting_length(batch, self.lengths):
            raise BackendError(f"{self.name} graph runs at lengths {self.lengths}: {length} does not hold this batch")
        loss, logits = self._run(batch if length == self.seq_len else last_tokens(batch, length), theta)
        return float(loss), np.asarray(logits, dtype=np.float32)

    def length_for(self, batch: EncodedBatch) -> int:
        """The length bucket a batch runs at: the smallest that holds its longest row (the padding before it is
        dropped, which changes nothing the graph computes: padded positions are masked)."""
        return fitting_length(batch, self.lengths)

    def initial_theta(self) -> np.ndarray:
        """θ₀ of the artifact this backend runs."""
        return initial_theta(self.folder, self.manifest)

    def artifact_id(self) -> str:
        """What a saved device state was computed with: the graph file's sha256, or for the eager reference the
        initial adapter's (a state must not be resumed on another artifact)."""
        m = self.manifest
        if self.graph is not None:
            return m.files[self.graph.file]
        return "eager:" + m.files[m.initial_adapter_file]

    @abstractmethod
    def _run(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]: ...

    def describe(self) -> str:
        file = self.graph.file if self.graph else "eager"
        return f"{self.name} ({file}, batch {self.batch_size}×{self.seq_len})"
