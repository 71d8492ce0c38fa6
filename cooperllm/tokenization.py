"""Prompt encoding with the ``tokenizers`` library (Rust, no torch): fixed length, left padding, safe truncation.

Left padding keeps the answer position at index -1 for every row. The text between the template's prefix and
suffix is what gets truncated, so the prompt's question always survives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from cooperllm.tasks import TaskSpec

if TYPE_CHECKING:
    from cooperllm.data import Dataset
    from cooperllm.manifest import Manifest


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # (B, L) int64
    attention_mask: np.ndarray  # (B, L) int64, 0 on left padding
    labels: np.ndarray  # (B,) int64


def left_pad(rows: Sequence[Sequence[int] | np.ndarray], labels, seq_len: int, pad_id: int) -> EncodedBatch:
    """One (B, seq_len) batch from already encoded rows, each at most seq_len long, padded on the left."""
    n = len(rows)
    input_ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((n, seq_len), dtype=np.int64)
    for i, ids in enumerate(rows):
        input_ids[i, seq_len - len(ids) :] = ids
        mask[i, seq_len - len(ids) :] = 1
    return EncodedBatch(input_ids, mask, np.asarray(labels, dtype=np.int64))


def last_tokens(batch: EncodedBatch, length: int) -> EncodedBatch:
    """The batch's last ``length`` positions: with left padding, each row's last tokens (all of a row that fits)."""
    return EncodedBatch(
        np.ascontiguousarray(batch.input_ids[:, -length:]),
        np.ascontiguousarray(batch.attention_mask[:, -length:]),
        batch.labels,
    )


def fitting_length(batch: EncodedBatch, lengths: Sequence[int]) -> int:
    """The smallest of ``lengths`` (ascending, the last the batch's own width) that holds the batch's longest row."""
    longest = int(batch.attention_mask.sum(axis=1).max(initial=0))
    return next((n for n in lengths if n >= longest), lengths[-1])


@dataclass(frozen=True)
class TokenizedCorpus:
    """A whole dataset's prompts as token ids, flat (row i is ``ids[offsets[i]:offsets[i+1]]``).

    Why: a device tokenizes its local data once and then trains without the tokenizer (~35 MB resident for a 49k BPE
    vocabulary) or the texts as Python strings; the ids of 60k SST-2 prompts take about 6 MB.
    """

    ids: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (n + 1,) int64
    labels: np.ndarray  # (n,) int64
    seq_len: int
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def batch(self, indices: Sequence[int] | np.ndarray) -> EncodedBatch:
        idx = np.asarray(indices, dtype=np.int64)
        return left_pad([self.row(int(i)) for i in idx], self.labels[idx], self.seq_len, self.pad_id)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenizedCorpus:
        """The given rows, in that order (a device's shard of a shared corpus)."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = [self.row(int(i)) for i in idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        ids = np.concatenate(rows) if rows else np.empty(0, np.int32)
        return TokenizedCorpus(ids, offsets, self.labels[idx].copy(), self.seq_len, self.pad_id)

    def fingerprint_ids(self, rows: int = 64) -> bytes:
        """The first rows' ids and all labels: enough to tell one local dataset from another."""
        return self.ids[: self.offsets[min(rows, len(self))]].tobytes() + self.labels.tobytes()


class PromptEncoder:
    def __init__(self, tokenizer_file: str | os.PathLike, task: TaskSpec, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.task = task
        self.seq_len = seq_len
        prefix, suffix = task.split_template()
        self._prefix = self._ids(prefix)
        self._suffix = self._ids(suffix)
        if len(self._prefix) + len(self._suffix) >= seq_len:
            raise ValueError(
                f"seq_len {seq_len} leaves no room for text after the template's "
                f"{len(self._prefix) + len(self._suffix)} tokens"
            )
        self.pad_id = self._pad_id()
        self.label_token_ids = self._label_token_ids()

    @classmethod
    def for_artifacts(cls, folder: str | os.PathLike, manifest: Manifest) -> PromptEncoder:
        """The encoder an artifact folder was exported with (its tokenizer, task and graph length)."""
        return cls(Path(folder) / manifest.tokenizer_file, manifest.task, manifest.graphs[0].seq_len)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def _pad_id(self) -> int:
        for tok in ("<|endoftext|>", "<pad>", "<|im_end|>", "</s>", "<eos>"):
            tid = self.tokenizer.token_to_id(tok)
            if tid is not None:
                return tid
        return 0

    def _label_token_ids(self) -> list[int]:
        """The first token of each label word; none for a seq-cls task without label words (its head scores)."""
        ids = []
        for word in self.task.label_words:
            toks = self._ids(word)
            if not toks:
                raise ValueError(f"label word {word!r} encodes to no token")
            ids.append(toks[0])  # the first token decides; distinct first tokens are required
        if len(set(ids)) != len(ids):
            raise ValueError(f"label words {self.task.label_words} share a first token; choose other words")
        return ids

    def encode_text(self, text: str) -> list[int]:
        body_budget = self.seq_len - len(self._prefix) - len(self._suffix)
        return self._prefix + self._ids(text)[:body_budget] + self._suffix

    def encode(self, texts: list[str], labels: np.ndarray | list[int]) -> EncodedBatch:
        return left_pad([self.encode_text(t) for t in texts], labels, self.seq_len, self.pad_id)

    def tokenize(self, dataset: Dataset, chunk: int = 2048) -> TokenizedCorpus:
        """Encode every example once (batched in the Rust tokenizer), exactly as ``encode`` would row by row.

        Rows are written straight into one growing int32 buffer: no per-row Python objects outlive a chunk, so the
        heap the texts and the tokenizer used can be handed back once they are dropped."""
        body_budget = self.seq_len - len(self._prefix) - len(self._suffix)
        prefix, suffix = np.asarray(self._prefix, np.int32), np.asarray(self._suffix, np.int32)
        n = len(dataset)
        offsets = np.zeros(n + 1, dtype=np.int64)
        ids = np.empty(n * (len(prefix) + len(suffix) + min(body_budget, 32)), dtype=np.int32)
        pos = 0
        for start in range(0, n, chunk):
            texts = dataset.texts[start : start + chunk]
            bodies = [e.ids[:body_budget] for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
            need = pos + sum(len(prefix) + len(b) + len(suffix) for b in bodies)
            if need > len(ids):
                ids = np.resize(ids, max(need, int(len(ids) * 1.5)))
            for j, body in enumerate(bodies):
                for part in (prefix, body, suffix):
                    ids[pos : pos + len(part)] = part
                    pos += len(part)
                offsets[start + j + 1] = pos
        labels = np.array(dataset.labels, dtype=np.int64)
        return TokenizedCorpus(ids[:pos].copy(), offsets, labels, self.seq_len, self.pad_id)
