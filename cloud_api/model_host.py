"""The cloud's full-precision model: loaded once, gives the θ layout, θ₀ and backprop gradients on public data.

The cloud never needs the exported graph: it runs the same ``ClassifierLoss`` eagerly. When an artifact folder is
given, its manifest must describe the same layout (a clear error otherwise) and its initial adapter is θ₀.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud_api.settings import Settings
from cooperllm.adapter import AdapterSpec
from cooperllm.checkpoint import initial_theta
from cooperllm.data import load_dataset, public_split, shared_data_dir
from cooperllm.layout import ParamLayout
from cooperllm.manifest import MANIFEST_FILE, Manifest, read_manifest, sha256_file
from cooperllm.models import TOKENIZER_FILE, load_causal_lm, resolve_model
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder

log = logging.getLogger(__name__)


class ArtifactMismatchError(ValueError):
    """The artifact manifest and the model the cloud loaded disagree (layout, task or adapter)."""


@dataclass
class ModelHost:
    model_dir: Path
    model_name: str
    task: TaskSpec
    adapter: AdapterSpec
    layout: ParamLayout
    theta0: np.ndarray
    artifact_hashes: dict[str, str]
    module: object  # ClassifierLoss (torch)
    public_ids: np.ndarray  # (N, L) int64
    public_mask: np.ndarray
    public_labels: np.ndarray
    torch_threads: int = 1
    backprop_chunk: int = 8  # examples per backward pass: bounds activation memory whatever a run's grad_batch_size
    # functional_call swaps the module's parameters while it runs: one caller at a time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_public(self) -> int:
        return int(self.public_labels.shape[0])

    def gradient(self, theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """∂ mean-CE / ∂θ on the public rows ``rows`` at ``theta`` (layout order, float32) and the loss.

        The rows go through backward ``backprop_chunk`` at a time, each chunk's mean loss weighted by its share of
        the rows, and the gradients accumulate: the same mean gradient, with the activations of one chunk in memory
        instead of the whole batch (a run's ``grad_batch_size`` 64 held ~12 GB of SmolLM2 activations at once)."""
        import torch  # deferred: loads torch (heavy; not needed at import)
        from torch.func import functional_call  # deferred: loads torch (heavy; not needed at import)

        torch.set_num_threads(self.torch_threads)
        rows = np.asarray(rows)
        flat = torch.tensor(np.asarray(theta, dtype=np.float32), requires_grad=True)
        total = 0.0
        with self._lock, torch.enable_grad():
            for start in range(0, len(rows), self.backprop_chunk):
                chunk = rows[start : start + self.backprop_chunk]
                params = {t.name: flat[t.offset : t.offset + t.size].view(t.shape) for t in self.layout.tensors}
                inputs = (
                    torch.from_numpy(self.public_ids[chunk]),
                    torch.from_numpy(self.public_mask[chunk]),
                    torch.from_numpy(self.public_labels[chunk]),
                )
                loss, _ = functional_call(self.module, params, inputs, strict=False)
                (loss * (len(chunk) / len(rows))).backward()
                total += float(loss.detach()) * len(chunk)
        return flat.grad.numpy().astype(np.float32, copy=True), total / len(rows)

    def label_logits(self, theta: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Label logits of the eager model at θ (used to check exports)."""
        import torch  # deferred: loads torch (heavy; not needed at import)
        from torch.func import functional_call  # deferred: loads torch (heavy; not needed at import)

        params = {n: torch.from_numpy(np.array(v)) for n, v in self.layout.unflatten(theta.copy()).items()}
        labels = torch.zeros(input_ids.shape[0], dtype=torch.int64)
        with self._lock, torch.no_grad():
            _, logits = functional_call(
                self.module,
                params,
                (torch.from_numpy(input_ids), torch.from_numpy(attention_mask), labels),
                strict=False,
            )
        return logits.numpy()


def _task_and_adapter(settings: Settings) -> tuple[TaskSpec, AdapterSpec, int]:
    task = TaskSpec(
        mode=settings.task,
        template=settings.template.replace("\\n", "\n"),
        label_words=tuple(settings.label_words),
        label_names=tuple(settings.label_names),
    )
    adapter = AdapterSpec(
        settings.lora_rank, settings.lora_alpha, tuple(settings.lora_targets), settings.lora_init_seed
    )
    return task, adapter, settings.seq_len


# Settings the manifest fixes once artifacts are given: (setting, its flag, the manifest's value).
_MANIFEST_SETS = (
    ("task", "--task", lambda m: m.task.mode),
    ("template", "--template", lambda m: m.task.template),
    ("label_words", "--label-words", lambda m: tuple(m.task.label_words)),
    ("label_names", "--label-names", lambda m: tuple(m.task.label_names)),
    ("seq_len", "--seq-len", lambda m: m.graphs[0].seq_len),
)


def check_settings_against_manifest(settings: Settings, manifest: Manifest | None = None) -> None:
    """Refuse a setting given explicitly (flag or environment) that contradicts the artifacts' manifest: the manifest
    defines the task, and a contradicting value would otherwise be dropped without a word."""
    if settings.artifacts is None:
        return
    manifest = manifest or read_manifest(settings.artifacts, verify_hashes=False)
    for name, flag, of_manifest in _MANIFEST_SETS:
        value, expected = getattr(settings, name), of_manifest(manifest)
        if name in settings.model_fields_set and (tuple(value) if isinstance(value, list) else value) != expected:
            raise ArtifactMismatchError(
                f"{flag} {value!r} contradicts {settings.artifacts}/manifest.json ({expected!r}); leave it out, the "
                "manifest sets it"
            )


def load_model_host(settings: Settings) -> ModelHost:
    """Resolve and load the model, build the task module and layout, read the artifacts and encode public data."""
    import torch  # deferred: loads torch (heavy; not needed at import)

    from cooperllm.modeling import build_task_model, theta_from_module  # deferred: loads torch

    torch.set_num_threads(settings.torch_threads)
    task, adapter, seq_len = _task_and_adapter(settings)
    manifest = None
    if settings.artifacts is not None:
        manifest = read_manifest(settings.artifacts)
        check_settings_against_manifest(settings, manifest)
        task = manifest.task
        if manifest.adapter is None:
            raise ArtifactMismatchError(f"{settings.artifacts}: the manifest has no LoRA adapter; the cloud needs one")
        adapter = manifest.adapter
        seq_len = manifest.graphs[0].seq_len
    # the model the artifacts were exported from, unless one is named
    model = manifest.model_name if manifest is not None and "model" not in settings.model_fields_set else settings.model
    model_dir = resolve_model(model)
    encoder = PromptEncoder(model_dir / TOKENIZER_FILE, task, seq_len)
    lm = load_causal_lm(model_dir)
    adapter = adapter.for_family(lm.config.model_type)  # what the PEFT download names
    module, layout = build_task_model(lm, encoder, adapter)
    theta0 = theta_from_module(module, layout)
    hashes: dict[str, str] = {}
    if manifest is not None:
        if manifest.layout.to_dict() != layout.to_dict():
            raise ArtifactMismatchError(
                f"{settings.artifacts}: the manifest's θ layout ({manifest.layout.total} values in "
                f"{len(manifest.layout.blocks)} blocks) differs from the model's ({layout.total} in "
                f"{len(layout.blocks)}); export the artifacts from the same model, task and adapter"
            )
        if list(manifest.label_token_ids) != list(encoder.label_token_ids):
            raise ArtifactMismatchError(f"{settings.artifacts}: label token ids differ from the model's tokenizer")
        theta0 = initial_theta(settings.artifacts, manifest)
        hashes = dict(manifest.files)
        hashes[MANIFEST_FILE] = sha256_file(Path(settings.artifacts) / MANIFEST_FILE)
    else:
        hashes["tokenizer.json"] = sha256_file(model_dir / TOKENIZER_FILE)
    data_path = settings.public_data or shared_data_dir() / "sst2" / "dev.tsv"
    data = load_dataset(data_path, settings.text_column, settings.label_column, task.label_names)
    public = public_split(data, settings.public_n, seed=0)
    enc = encoder.encode(public.texts, public.labels)
    log.info(
        "cloud model %s: %d trainable values in %d blocks, %d public examples (%s)",
        model_dir.name,
        layout.total,
        len(layout.blocks),
        len(public),
        data_path,
    )
    return ModelHost(
        model_dir=model_dir,
        model_name=str(model_dir),  # a folder PEFT can load the base model from
        task=task,
        adapter=adapter,
        layout=layout,
        theta0=theta0,
        artifact_hashes=hashes,
        module=module,
        public_ids=enc.input_ids,
        public_mask=enc.attention_mask,
        public_labels=enc.labels,
        torch_threads=settings.torch_threads,
        backprop_chunk=settings.backprop_chunk,
    )


def minibatch_rows(n_public: int, batch: int, run_seed: int, round_: int, k: int) -> np.ndarray:
    """Deterministic public minibatch k for guidance round ``round_``: a restart recomputes the same gradients."""
    digest = hashlib.blake2b(f"{run_seed}:{round_}:{k}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return np.sort(rng.choice(n_public, size=min(batch, n_public), replace=False))
