"""Evaluation of θ on a labelled corpus, and the paired before/after comparison behind a reported gain (torch-free).

One measure for every side: the device runs it through its exported graph, the simulation through the same graph
at each round's θ, ``cooperllm eval`` through the eager module (the zero-shot floor every fine-tuning run must beat).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from cooperllm.tokenization import EncodedBatch, TokenizedCorpus

log = logging.getLogger(__name__)

# run(batch, θ) -> (mean CE loss, label logits (B, C)) on batches of a fixed size: a graph backend's ``run``.
RunFn = Callable[[EncodedBatch, np.ndarray], tuple[float, np.ndarray]]


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


def evaluate(
    run_fn: RunFn, theta: np.ndarray, corpus: TokenizedCorpus, batch_size: int, progress: bool = True
) -> EvalResult:
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
