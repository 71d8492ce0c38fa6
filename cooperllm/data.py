"""Text-classification data: TSV/JSONL readers, device partitions (IID or Dirichlet label skew), public splits."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_TEXT_COLUMNS = ("sentence", "text", "content", "review")


class DataError(ValueError):
    """A data file that cannot be read as labelled text; the message names the file and line."""


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
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> Dataset:
    """Read a ``.tsv`` (header row) or ``.jsonl`` file of labelled texts.

    Labels may be integers 0..C-1 or names from ``label_names``; when names are not given, integer labels are
    named by their value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .tsv, .csv or .jsonl)")
    texts: list[str] = []
    raw_labels: list[tuple[int, object]] = []
    for line_no, row in rows:
        col = text_column or next((c for c in DEFAULT_TEXT_COLUMNS if c in row), None)
        if col is None or col not in row:
            raise DataError(f"{path}:{line_no}: no text column {text_column or DEFAULT_TEXT_COLUMNS}")
        if label_column not in row:
            raise DataError(f"{path}:{line_no}: no label column {label_column!r}")
        text = row[col]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{line_no}: empty or non-text value in column {col!r}")
        texts.append(text.strip())
        raw_labels.append((line_no, row[label_column]))
    if not texts:
        raise DataError(f"{path}: no examples")
    names, labels = _resolve_labels(path, raw_labels, label_names)
    return Dataset(texts, labels, names, str(path))


def _read_delimited(path: Path, delimiter: str) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        header = [h.strip() for h in header]
        rows = []
        for values in reader:
            line_no = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{path}:{line_no}: expected {len(header)} fields, found {len(values)}")
            rows.append((line_no, dict(zip(header, values, strict=True))))
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object")
            rows.append((line_no, obj))
    return rows


def _resolve_labels(
    path: Path, raw: list[tuple[int, object]], label_names: Sequence[str] | None
) -> tuple[tuple[str, ...], np.ndarray]:
    names = tuple(label_names) if label_names else None
    labels = np.empty(len(raw), dtype=np.int64)
    for i, (line_no, value) in enumerate(raw):
        text = str(value).strip()
        if names is not None and text in names:
            labels[i] = names.index(text)
            continue
        try:
            labels[i] = int(text)
        except ValueError:
            raise DataError(f"{path}:{line_no}: label {text!r} is neither an integer nor one of {names}") from None
        if labels[i] < 0 or (names is not None and labels[i] >= len(names)):
            raise DataError(f"{path}:{line_no}: label {labels[i]} out of range for {len(names or ())} classes")
    if names is None:
        names = tuple(str(v) for v in range(int(labels.max()) + 1))
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
