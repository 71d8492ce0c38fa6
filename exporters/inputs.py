"""Inputs of an exported graph, torch-free: the validation batch, θ split into graph inputs, seeded directions.

Shared by the export-time checks and the benchmark's fresh runtime processes, which must not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cooperllm.layout import ParamLayout
from cooperllm.perturb import Direction
from cooperllm.perturb import direction as block_direction
from cooperllm.tokenization import EncodedBatch, PromptEncoder

# Fixed validation texts: real sentences, so the checks exercise real token ids and varied padding.
VALIDATION_TEXTS = (
    "a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the film is good , funny and smart , the best of the year",
    "it 's an awful , tedious , lifeless mess with poor writing and worse acting , a real slog from start to end",
    "allows us to hope that nolan is poised to embark a major career as a commercial yet inventive filmmaker .",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere "
    "locales .",
    "it 's slow -- very , very slow .",
    "a sometimes tedious film .",
)


def validation_batch(encoder: PromptEncoder, batch_size: int, texts: Sequence[str] = VALIDATION_TEXTS) -> EncodedBatch:
    """``batch_size`` rows cycling through ``texts``, labels cycling through the classes."""
    chosen = [texts[i % len(texts)] for i in range(batch_size)]
    labels = np.arange(batch_size, dtype=np.int64) % encoder.task.num_classes
    return encoder.encode(chosen, labels)


def direction(seed: int, layout: ParamLayout) -> np.ndarray:
    """The device's perturbation for ``seed`` over every block (plain Rademacher)."""
    return np.concatenate([block_direction(seed, b.index, b.size, Direction.ISO) for b in layout.blocks]).astype(
        np.float32
    )


def graph_inputs(batch: EncodedBatch, theta: np.ndarray, layout: ParamLayout) -> list[np.ndarray]:
    """input_ids, attention_mask, labels, then θ's tensors in layout order (the manifest's input order)."""
    views = layout.unflatten(np.ascontiguousarray(theta, dtype=np.float32))
    return [batch.input_ids, batch.attention_mask, batch.labels, *(np.ascontiguousarray(v) for v in views.values())]
