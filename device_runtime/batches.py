"""Local data as fixed-shape batches: a stateless schedule (batch t is a function of seed and t), so resuming at
step t draws exactly the batches an uninterrupted run would have drawn; and evaluation through any backend."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cooperllm.data import Dataset
from cooperllm.tokenization import EncodedBatch, PromptEncoder

log = logging.getLogger(__name__)


class BatchSchedule:
    """Batch t = examples [t·B, (t+1)·B) of an epoch-wise permutation seeded by (seed, epoch)."""

    def __init__(self, dataset: Dataset, encoder: PromptEncoder, batch_size: int, seed: int = 0):
        if len(dataset) < batch_size:
            raise ValueError(f"{len(dataset)} examples cannot fill one batch of {batch_size}")
        self.dataset = dataset
        self.encoder = encoder
        self.batch_size = batch_size
        self.seed = seed
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)
        self.per_epoch = len(dataset) // batch_size  # the tail of each permutation is skipped

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._perm_epoch = epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def batch(self, step: int) -> EncodedBatch:
        idx = self.indices(step)
        return self.encoder.encode([self.dataset.texts[i] for i in idx], self.dataset.labels[idx])


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    n_examples: int


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row CE in float64 (stable log-sum-exp)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def evaluate(
    run_fn, theta: np.ndarray, encoder: PromptEncoder, dataset: Dataset, batch_size: int, progress: bool = True
) -> EvalResult:
    """Accuracy and mean CE through a fixed-batch graph: the last batch is padded by repeating its first row and the
    padding is dropped from the figures (loss is recomputed from the logits, not the graph's batch mean)."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    correct, total_loss = 0, 0.0
    with tqdm(total=len(dataset), desc="eval", unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            idx = list(range(start, stop))
            real = len(idx)
            idx += [start] * (batch_size - real)
            batch = encoder.encode([dataset.texts[i] for i in idx], dataset.labels[idx])
            _, logits = run_fn(batch, theta)
            logits, labels = logits[:real], batch.labels[:real]
            correct += int((logits.argmax(-1) == labels).sum())
            total_loss += float(cross_entropy(logits, labels).sum())
            bar.update(real)
    n = len(dataset)
    return EvalResult(correct / n, total_loss / n, n)
