"""Prompt encoding with the ``tokenizers`` library (Rust, no torch): fixed length, left padding, safe truncation.

Left padding keeps the answer position at index -1 for every row. The text between the template's prefix and
suffix is what gets truncated, so the prompt's question always survives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from cooperllm.tasks import TaskSpec


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # (B, L) int64
    attention_mask: np.ndarray  # (B, L) int64, 0 on left padding
    labels: np.ndarray  # (B,) int64


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

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def _pad_id(self) -> int:
        for tok in ("<|endoftext|>", "<pad>", "<|im_end|>", "</s>", "<eos>"):
            tid = self.tokenizer.token_to_id(tok)
            if tid is not None:
                return tid
        return 0

    def _label_token_ids(self) -> list[int]:
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
        n = len(texts)
        input_ids = np.full((n, self.seq_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, self.seq_len), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = self.encode_text(text)
            input_ids[i, self.seq_len - len(ids) :] = ids
            mask[i, self.seq_len - len(ids) :] = 1
        return EncodedBatch(input_ids, mask, np.asarray(labels, dtype=np.int64))
