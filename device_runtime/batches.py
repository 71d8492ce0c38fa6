"""Local data as fixed-shape batches: a stateless schedule (batch t is a function of seed and t), so resuming at
step t draws exactly the batches an uninterrupted run would have drawn. Evaluation is the core's
(``cooperllm.evaluate``)."""

from __future__ import annotations

import logging

import numpy as np

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
