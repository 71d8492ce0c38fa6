"""Local data as fixed-shape batches: a stateless schedule (batch t is a function of seed and t), so resuming at
step t draws exactly the batches an uninterrupted run would have drawn; and evaluation through any backend."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from cooperllm.tokenization import EncodedBatch, TokenizedCorpus

log = logging.getLogger(__name__)


class BatchSchedule:
    """Batch t = examples [t·B, (t+1)·B) of an epoch-wise permutation seeded by (seed, epoch)."""

    def __init__(self, corpus: TokenizedCorpus, batch_size: int, seed: int = 0):
        if len(corpus) < batch_size:
            raise ValueError(f"{len(corpus)} examples cannot fill one batch of {batch_size}")
        self.corpus = corpus
        self.batch_size = batch_size
        self.seed = seed
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)
        self.per_epoch = len(corpus) // batch_size  # the tail of each permutation is skipped

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.corpus))
            self._perm_epoch = epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def batch(self, step: int) -> EncodedBatch:
        return self.corpus.batch(self.indices(step))


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    n_examples: int
    correct: np.ndarray | None = field(default=None, repr=False, compare=False)  # per example, in corpus order


@dataclass(frozen=True)
class PairedChange:
    """How two evaluations of the same examples differ: a gain of a point or two on 872 examples is only worth
    reporting with the count of predictions that turned right and wrong and the exact McNemar p-value."""

    gained: int  # wrong before, right after
    lost: int  # right before, wrong after
    p_value: float  # two-sided exact McNemar (binomial on the discordant pairs)

    def to_dict(self) -> dict:
        return {"gained": self.gained, "lost": self.lost, "p_value": self.p_value}


def paired_change(before: EvalResult, after: EvalResult) -> PairedChange:
    if before.correct is None or after.correct is None or before.correct.shape != after.correct.shape:
        raise ValueError("paired comparison needs per-example results on the same examples")
    gained = int((~before.correct & after.correct).sum())
    lost = int((before.correct & ~after.correct).sum())
    n = gained + lost
    log_norm = math.lgamma(n + 1) - n * math.log(2.0)  # in logs: exact big-integer binomials are slow for large sets
    tail = sum(math.exp(log_norm - math.lgamma(k + 1) - math.lgamma(n - k + 1)) for k in range(min(gained, lost) + 1))
    return PairedChange(gained, lost, min(1.0, 2 * tail))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row CE in float64 (stable log-sum-exp)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def evaluate(run_fn, theta: np.ndarray, corpus: TokenizedCorpus, batch_size: int, progress: bool = True) -> EvalResult:
    """Accuracy and mean CE through a fixed-batch graph: the last batch is padded by repeating its first row and the
    padding is dropped from the figures (loss is recomputed from the logits, not the graph's batch mean)."""
    if len(corpus) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    correct, total_loss = np.zeros(len(corpus), dtype=bool), 0.0
    with tqdm(total=len(corpus), desc="eval", unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(corpus), batch_size):
            stop = min(start + batch_size, len(corpus))
            idx = list(range(start, stop))
            real = len(idx)
            idx += [start] * (batch_size - real)
            batch = corpus.batch(idx)
            _, logits = run_fn(batch, theta)
            logits, labels = logits[:real], batch.labels[:real]
            correct[start:stop] = logits.argmax(-1) == labels
            total_loss += float(cross_entropy(logits, labels).sum())
            bar.update(real)
    n = len(corpus)
    return EvalResult(float(correct.mean()), total_loss / n, n, correct)
