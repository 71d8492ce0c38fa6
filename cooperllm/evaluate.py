"""Eager evaluation of a task model on a labelled file: the zero-shot floor every fine-tuning run must beat."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cooperllm.data import Dataset
from cooperllm.tokenization import PromptEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    n_examples: int


def evaluate(
    module, encoder: PromptEncoder, dataset: Dataset, batch_size: int = 16, progress: bool = True
) -> EvalResult:
    """Mean CE loss and accuracy (argmax over label logits) of a ``ClassifierLoss`` module."""
    import torch

    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    total_loss, correct = 0.0, 0
    with torch.inference_mode(), tqdm(total=len(dataset), desc="eval", unit="ex", disable=not progress) as bar:
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            batch = encoder.encode(dataset.texts[start:stop], dataset.labels[start:stop])
            loss, logits = module(
                torch.from_numpy(batch.input_ids),
                torch.from_numpy(batch.attention_mask),
                torch.from_numpy(batch.labels),
            )
            total_loss += float(loss) * (stop - start)
            correct += int((logits.argmax(-1).numpy() == batch.labels).sum())
            bar.update(stop - start)
            bar.set_postfix(acc=f"{correct / stop:.3f}")
    n = len(dataset)
    return EvalResult(accuracy=correct / n, loss=total_loss / n, n_examples=n)


def accuracy_from_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())
