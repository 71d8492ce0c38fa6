"""Text-classification data sets: labelled files read into classes, device partitions (IID or Dirichlet label skew),
public splits."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cooperllm.datafile import DataError, read_labelled


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    labels: np.ndarray  # int64, values in [0, num_classes)
    label_names: tuple[str, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset([self.texts[i] for i in idx], self.labels[idx], self.label_names, self.source)


def shared_data_dir() -> Path:
    """``../shared/data`` beside the project checkout, or $COOPERLLM_DATA_DIR."""
    env = os.environ.get("COOPERLLM_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_dataset(
    path: str | os.PathLike,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    header: bool | None = None,
) -> Dataset:
    """Read a TSV, CSV or JSONL file of labelled texts (``cooperllm.datafile``: header and columns detected).

    With ``label_names`` (an artifact's classes) a label is one of the names or an index into them; anything else is
    refused, naming the classes. Without them the classes are the file's distinct labels in a stable order (numeric
    for integers, alphabetical otherwise), so the same file always gives the same class indices.
    """
    path = Path(path)
    rows = read_labelled(path, text_column, label_column, header, tuple(label_names or ()))
    names, labels = _resolve_labels(path, rows.labels, label_names)
    return Dataset(rows.texts, labels, names, str(path))


def _label_key(text: str) -> tuple[int, int, str]:
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def _resolve_labels(
    path: Path, raw: list[tuple[int, object]], label_names: Sequence[str] | None
) -> tuple[tuple[str, ...], np.ndarray]:
    values = [(line, str(v).strip()) for line, v in raw]
    for line, text in values:
        if not text:
            raise DataError(f"{path}:{line}: empty label")
    # without an artifact's classes: the labels the file uses, and only those (1..4 gives four classes, not five)
    names = tuple(label_names) if label_names else tuple(sorted({t for _, t in values}, key=_label_key))
    index = {n: i for i, n in enumerate(names)}
    labels = np.empty(len(values), dtype=np.int64)
    for i, (line, text) in enumerate(values):
        if text in index:
            labels[i] = index[text]
        elif text.isdigit() and int(text) < len(names):
            labels[i] = int(text)
        else:
            raise DataError(
                f"{path}:{line}: label {text!r} is not one of the {len(names)} classes {list(names)} "
                "(the artifact's, from export --data): fix the file or export again with data that has it"
            )
    if len(names) < 2:
        raise DataError(f"{path}: one class only ({names[0]!r}); a classifier needs at least two")
    return names, labels


def partition_iid(n_examples: int, n_devices: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal out evenly; every example goes to exactly one device."""
    _check_partition_args(n_examples, n_devices)
    perm = np.random.default_rng(seed).permutation(n_examples)
    return [np.sort(part) for part in np.array_split(perm, n_devices)]


def partition_dirichlet(labels: np.ndarray, n_devices: int, beta: float, seed: int) -> list[np.ndarray]:
    """Label skew: each class is split across devices in proportions drawn from Dirichlet(β).

    Small β gives each device few classes. Every example goes to exactly one device.
    """
    _check_partition_args(len(labels), n_devices)
    if beta <= 0:
        raise ValueError(f"Dirichlet beta must be > 0, got {beta}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(n_devices, beta))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for d, chunk in enumerate(np.split(idx, cuts)):
            parts[d].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _check_partition_args(n_examples: int, n_devices: int) -> None:
    if n_devices < 1:
        raise ValueError(f"need at least one device, got {n_devices}")
    if n_examples < n_devices:
        raise ValueError(f"cannot split {n_examples} examples across {n_devices} devices")


def parse_partition(spec: str) -> tuple[str, float | None]:
    """``iid`` or ``dirichlet:β``."""
    if spec == "iid":
        return "iid", None
    kind, _, value = spec.partition(":")
    if kind == "dirichlet":
        try:
            return "dirichlet", float(value)
        except ValueError:
            pass
    raise ValueError(f"partition must be 'iid' or 'dirichlet:BETA', got {spec!r}")


def partition(dataset: Dataset, n_devices: int, spec: str, seed: int) -> list[np.ndarray]:
    kind, beta = parse_partition(spec)
    if kind == "iid":
        return partition_iid(len(dataset), n_devices, seed)
    return partition_dirichlet(dataset.labels, n_devices, beta, seed)


def public_split(
    dataset: Dataset, n: int | None = None, seed: int = 0, classes: Sequence[int] | None = None
) -> Dataset:
    """The cloud's public data: optionally restricted to some classes (a shifted distribution), then n sampled."""
    idx = np.arange(len(dataset))
    if classes is not None:
        idx = idx[np.isin(dataset.labels, np.asarray(classes))]
        if len(idx) == 0:
            raise ValueError(f"no public examples of classes {list(classes)}")
    if n is not None and n < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    return dataset.subset(idx)
