"""The artifact manifest: the contract between the exporter, the device runtime and the cloud.

``manifest.json`` sits next to the exported graph(s) and lists, for a device that has no PyTorch, everything it
needs: graph files and their input order, the θ layout, the task (template, label words), the tokenizer, the
quantization, the initial adapter, the export-time validation results and the sha256 of every file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cooperllm.adapter import AdapterSpec
from cooperllm.checkpoint import atomic_write_bytes
from cooperllm.layout import ParamLayout
from cooperllm.tasks import TaskSpec

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
DATA_INPUTS = ("input_ids", "attention_mask", "labels")
OUTPUTS = ("loss", "label_logits")


class ManifestError(ValueError):
    """A manifest or artifact folder that cannot be trusted; the message says which field or file."""


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: ``format`` is ``pte`` or ``onnx``; ``backend`` e.g. ``xnnpack``, ``portable``, ``ort``."""

    file: str
    format: str
    backend: str
    batch_size: int
    seq_len: int
    # θ+εz and θ−εz in one call. No exporter writes one any more (measured no faster than two calls); the field stays
    # in the manifest format, and readers that cannot run such a graph (the Android demo) refuse it.
    paired: bool = False
    # Length buckets: the sequence lengths (ascending, the last one seq_len) the graph takes; a device pads a batch
    # to the smallest that holds its longest example. Empty: seq_len only (a reader that ignores the field pads to
    # seq_len, which every graph takes).
    seq_buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_buckets", tuple(int(b) for b in self.seq_buckets))

    @property
    def lengths(self) -> tuple[int, ...]:
        """The sequence lengths this graph runs at, ascending."""
        return self.seq_buckets or (self.seq_len,)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "format": self.format,
            "backend": self.backend,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "paired": self.paired,
            "seq_buckets": list(self.seq_buckets),
        }


@dataclass(frozen=True)
class Manifest:
    model_name: str
    task: TaskSpec
    adapter: AdapterSpec | None
    layout: ParamLayout
    graphs: list[GraphSpec]
    input_names: list[str]  # data inputs, then every trainable tensor in layout order
    output_names: list[str]
    label_token_ids: list[int]
    pad_token_id: int
    tokenizer_file: str
    initial_adapter_file: str
    quantization: dict
    files: dict[str, str]  # relative path -> sha256 hex
    validation: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "model_name": self.model_name,
            "task": self.task.to_dict(),
            "adapter": self.adapter.to_dict() if self.adapter else None,
            "layout": self.layout.to_dict(),
            "graphs": [g.to_dict() for g in self.graphs],
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "label_token_ids": list(self.label_token_ids),
            "pad_token_id": self.pad_token_id,
            "tokenizer_file": self.tokenizer_file,
            "initial_adapter_file": self.initial_adapter_file,
            "quantization": self.quantization,
            "validation": self.validation,
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Manifest:
        try:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ManifestError(f"manifest format_version {version} is not supported (expected {FORMAT_VERSION})")
            layout = ParamLayout.from_dict(data["layout"])
            manifest = cls(
                model_name=str(data["model_name"]),
                task=TaskSpec.from_dict(data["task"]),
                adapter=AdapterSpec.from_dict(data["adapter"]) if data.get("adapter") else None,
                layout=layout,
                graphs=[GraphSpec(**g) for g in data["graphs"]],
                input_names=[str(n) for n in data["input_names"]],
                output_names=[str(n) for n in data["output_names"]],
                label_token_ids=[int(i) for i in data["label_token_ids"]],
                pad_token_id=int(data["pad_token_id"]),
                tokenizer_file=str(data["tokenizer_file"]),
                initial_adapter_file=str(data["initial_adapter_file"]),
                quantization=dict(data["quantization"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                validation=dict(data.get("validation", {})),
                format_version=version,
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc
        manifest._check_consistency()
        return manifest

    def _check_consistency(self) -> None:
        expected = [*DATA_INPUTS, *self.layout.names]
        if self.input_names != expected:
            raise ManifestError("manifest input_names must be the data inputs followed by the layout's tensors")
        if len(self.label_token_ids) != len(self.task.label_words):
            raise ManifestError("one label token id per label word is required")
        if not self.graphs:
            raise ManifestError("manifest lists no graph")
        for g in self.graphs:
            if g.format not in ("pte", "onnx"):
                raise ManifestError(f"graph {g.file}: unknown format {g.format!r}")
            if g.batch_size < 1 or g.seq_len < 1:
                raise ManifestError(f"graph {g.file}: batch_size and seq_len must be >= 1")
        for name in (self.tokenizer_file, self.initial_adapter_file, *(g.file for g in self.graphs)):
            if name not in self.files:
                raise ManifestError(f"manifest has no sha256 for {name}")

    def graph(self, fmt: str | None = None, backend: str | None = None) -> GraphSpec:
        for g in self.graphs:
            if (fmt is None or g.format == fmt) and (backend is None or g.backend == backend):
                return g
        raise ManifestError(f"no graph with format={fmt} backend={backend}; have {[g.file for g in self.graphs]}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_child(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise ManifestError(f"manifest names a file outside the artifact folder: {name}")
    return path


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_FILE
    atomic_write_bytes(path, (json.dumps(manifest.to_dict(), indent=1) + "\n").encode())
    return path


def read_manifest(folder: str | os.PathLike, verify_hashes: bool = True) -> Manifest:
    """Parse and validate ``manifest.json``; with ``verify_hashes`` every listed file must match its sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST_FILE}; export artifacts with `cooperllm export`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    manifest = Manifest.from_dict(data)
    if verify_hashes:
        verify_files(folder, manifest)
    return manifest


def verify_files(folder: str | os.PathLike, manifest: Manifest) -> None:
    folder = Path(folder)
    for name, digest in manifest.files.items():
        path = _safe_child(folder, name)
        if not path.is_file():
            raise ManifestError(f"artifact file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != digest:
            raise ManifestError(f"artifact file {name} has sha256 {actual[:12]}…, the manifest says {digest[:12]}…")
