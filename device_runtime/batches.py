"""Local data as fixed-shape batches: a stateless schedule (batch t is a function of seed and t), so resuming at
step t draws exactly the batches an uninterrupted run would have drawn. Evaluation is the core's
(``cooperllm.evaluate``)."""

from __future__ import annotations

import logging

import numpy as np

from cooperllm.tokenization import EncodedBatch, TokenizedCorpus

log = logging.getLogger(__name__)


POOL_BATCHES = 50  # by_length: examples are sorted by length within pools of this many batches


class BatchSchedule:
    """Batch t = examples [t·B, (t+1)·B) of an epoch-wise permutation seeded by (seed, epoch).

    ``by_length`` (for a graph with length buckets): within each pool of POOL_BATCHES consecutive batches of the
    permutation, examples are sorted by length before they are cut into batches, and the pool's batches are then
    shuffled — so a batch holds examples of similar length and runs in a small bucket, while every example is still
    seen once an epoch in an order the seed alone decides."""

    def __init__(self, corpus: TokenizedCorpus, batch_size: int, seed: int = 0, by_length: bool = False):
        if len(corpus) < batch_size:
            raise ValueError(f"{len(corpus)} examples cannot fill one batch of {batch_size}")
        self.corpus = corpus
        self.batch_size = batch_size
        self.seed = seed
        self.by_length = by_length
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)
        self.per_epoch = len(corpus) // batch_size  # the tail of each permutation is skipped

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(len(self.corpus))
            if self.by_length:
                self._perm = self._grouped(self._perm, rng)
            self._perm_epoch = epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def _grouped(self, perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lengths = np.diff(self.corpus.offsets)
        b = self.batch_size
        used = self.per_epoch * b
        pool = POOL_BATCHES * b
        out = perm.copy()
        for start in range(0, used, pool):
            chunk = perm[start : min(start + pool, used)]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches = chunk.reshape(-1, b)[rng.permutation(len(chunk) // b)]
            out[start : start + len(chunk)] = batches.reshape(-1)
        return out

    def batch(self, step: int) -> EncodedBatch:
        return self.corpus.batch(self.indices(step))
