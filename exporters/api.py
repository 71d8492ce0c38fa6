"""``export_artifacts``: HF model → quantized loss graph(s) with θ as inputs → validated artifact folder.

The folder holds ``model.pte`` and/or ``model.onnx``, ``adapter_init.safetensors``, ``tokenizer.json`` and a
``manifest.json`` (written last, only when every check passed or ``force`` is set) that hashes every file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cooperllm.adapter import AdapterSpec
from cooperllm.checkpoint import save_theta
from cooperllm.manifest import (
    DATA_INPUTS,
    MANIFEST_FILE,
    OUTPUTS,
    GraphSpec,
    Manifest,
    sha256_file,
    write_manifest,
)
from cooperllm.models import (
    DEFAULT_MODEL,
    TESTED_FAMILIES,
    TOKENIZER_FILE,
    load_causal_lm,
    resolve_model,
    smollm2_gguf,
)
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder, last_tokens
from exporters.errors import ExportError
from exporters.inputs import graph_inputs, validation_batch
from exporters.runners import open_runner
from exporters.schemes import check_scheme

log = logging.getLogger(__name__)

FORMATS = ("pte", "onnx")
PTE_BACKENDS = ("xnnpack", "portable", "xnnpack-qc8w")  # xnnpack-qc8w: exporters/int8_xnnpack.py
INITIAL_ADAPTER_FILE = "adapter_init.safetensors"
MAX_SEQ_LEN = 8192
MAX_BATCH = 4096


def graph_file(fmt: str) -> str:
    return f"model.{fmt}"


def resolve_backend(backend: str, formats: Sequence[str], quant: str) -> str:
    """``auto``: the fast int8 path (XNNPACK f32×qc8w) for an int8 pte-only export, plain XNNPACK otherwise."""
    if backend != "auto":
        return backend
    fmts = [formats] if isinstance(formats, str) else [str(f).lower() for f in formats]
    return "xnnpack-qc8w" if fmts == ["pte"] and str(quant).strip().lower() == "int8" else "xnnpack"


def check_request(formats: Sequence[str], backend: str, quant: str, batch_size: int, seq_len: int) -> tuple[list, str]:
    """Refuse a bad request before any heavy work; returns the normalised formats and quant scheme."""
    if isinstance(formats, str):
        formats = [formats]
    fmts = []
    for f in formats:
        f = str(f).lower()
        if f == "all":
            fmts.extend(x for x in FORMATS if x not in fmts)
        elif f in FORMATS:
            if f not in fmts:
                fmts.append(f)
        else:
            raise ExportError(f"unknown export format {f!r}; choose pte, onnx or all")
    if not fmts:
        raise ExportError("no export format requested")
    if backend not in PTE_BACKENDS:
        raise ExportError(f"unknown ExecuTorch backend {backend!r}; choose one of {', '.join(PTE_BACKENDS)}")
    scheme = check_scheme(quant)
    if backend == "xnnpack-qc8w" and (scheme != "int8" or "onnx" in fmts):
        raise ExportError(
            "backend xnnpack-qc8w runs int8 weight-only linears and writes .pte only: --quant int8 --format pte"
        )
    if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise ExportError(f"batch size must be an integer in [1, {MAX_BATCH}], got {batch_size!r}")
    if not isinstance(seq_len, int) or not 1 <= seq_len <= MAX_SEQ_LEN:
        raise ExportError(f"sequence length must be an integer in [1, {MAX_SEQ_LEN}], got {seq_len!r}")
    return fmts, scheme


def source_gguf(model: str | os.PathLike, model_dir: Path, gguf: str | os.PathLike | None) -> Path:
    """The GGUF whose blocks ``gguf-q4`` keeps: the one given, the default model's, or the model folder's only one."""
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise ExportError(f"--gguf {path}: no such file")
        return path
    if str(model) == DEFAULT_MODEL:
        return smollm2_gguf()
    found = sorted(model_dir.glob("*.gguf"))
    if len(found) != 1:
        raise ExportError(
            f"--quant gguf-q4 keeps a GGUF's 4-bit blocks and {model_dir} holds {len(found)} .gguf files: pass --gguf "
            "FILE (the file the model folder was converted from)"
        )
    return found[0]


def check_buckets(seq_buckets: Sequence[int] | None, seq_len: int) -> tuple[int, ...]:
    """Length buckets, ascending and ending at ``seq_len``; () for a graph of ``seq_len`` only."""
    if not seq_buckets:
        return ()
    buckets = sorted({int(b) for b in seq_buckets} | {seq_len})
    if buckets[0] < 2 or buckets[-1] != seq_len:
        raise ExportError(f"length buckets must lie in [2, {seq_len}] (the sequence length), got {list(seq_buckets)}")
    return tuple(buckets) if len(buckets) > 1 else ()


def model_num_layers(config) -> int:
    """Transformer layer count through optimum's normalized configs (one name across architectures)."""
    from optimum.utils import NormalizedConfigManager  # deferred: loads optimum (heavy; not needed at import)

    try:
        normalized = NormalizedConfigManager.get_normalized_config_class(config.model_type)(config)
        return int(normalized.num_layers)
    except (KeyError, AttributeError):
        log.warning("optimum has no normalized config for %r; reading num_hidden_layers", config.model_type)
        return int(config.num_hidden_layers)


def check_layer_blocks(config, layout, adapter: AdapterSpec | None) -> None:
    """Devices perturb and the cloud guides θ per layer: every layer must own exactly one block of LoRA tensors."""
    if adapter is None:
        return
    n_layers = model_num_layers(config)
    layer_blocks = [b.name for b in layout.blocks if b.name.startswith("layer.")]
    if layer_blocks != [f"layer.{i}" for i in range(n_layers)]:
        raise ExportError(
            f"the LoRA tensors fall into {len(layer_blocks)} layer blocks but the model has {n_layers} layers: this "
            f"architecture's module names (model_type {config.model_type!r}) do not follow '.layers.<i>.' or '.h.<i>.'"
        )


def export_artifacts(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    task: TaskSpec,
    adapter: AdapterSpec | None = AdapterSpec(),  # noqa: B008 - frozen dataclass, safe as a default
    formats: Sequence[str] = ("pte",),
    backend: str = "xnnpack",
    quant: str = "int8",
    batch_size: int = 8,
    seq_len: int = 64,
    validate: bool = True,
    force: bool = False,
    progress: bool = True,
    quantize_embeddings: bool = True,
    validation_texts: Sequence[str] | None = None,
    gguf: str | os.PathLike | None = None,
    seq_buckets: Sequence[int] | None = None,
) -> Manifest:
    """Export, validate and describe one artifact folder; raises ExportError on a bad request or a failed check.

    The graph is traced at a fixed ``batch_size`` × ``seq_len`` (devices pad to it). ``validation_texts`` (default:
    built-in sentences) fill the batch used for tracing and for the parity and fidelity checks. ``gguf`` is the
    source GGUF read by ``quant="gguf-q4"`` (default: the default model's, or the one ``*.gguf`` in the model folder).
    ``seq_buckets`` (e.g. 32, 64) makes the sequence dimension dynamic down to the smallest bucket: one program that
    a device runs at the smallest bucket holding each batch, validated at every bucket.
    """
    fmts, scheme = check_request(formats, backend, quant, batch_size, seq_len)
    buckets = check_buckets(seq_buckets, seq_len)
    if adapter is None and task.mode != "seq-cls":
        raise ExportError("causal-lm-cls without an adapter has no trainable tensor; give an AdapterSpec")
    model_dir = resolve_model(model)
    if gguf is not None and scheme != "gguf-q4":
        raise ExportError(f"--gguf is read by --quant gguf-q4 only, not by --quant {scheme}")
    gguf_file = source_gguf(model, model_dir, gguf) if scheme == "gguf-q4" else None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # a stale manifest must never describe new files

    stages = ["load", "quantize", "trace", *(f"export {f}" for f in fmts), *(["validate"] if validate else [])]
    job = _Job(
        model,
        model_dir,
        out,
        task,
        adapter,
        fmts,
        backend,
        scheme,
        batch_size,
        seq_len,
        validate,
        force,
        quantize_embeddings,
        validation_texts,
        gguf_file,
        buckets,
    )
    with _Progress(stages, progress) as bar:
        return _export(job, bar)


@dataclass(frozen=True)
class _Job:
    """One checked export request, handed from ``export_artifacts`` to the heavy half in one piece."""

    model: str | os.PathLike
    model_dir: Path
    out: Path
    task: TaskSpec
    adapter: AdapterSpec | None
    fmts: list[str]
    backend: str
    scheme: str
    batch_size: int
    seq_len: int
    validate: bool
    force: bool
    quantize_embeddings: bool
    validation_texts: Sequence[str] | None
    gguf: Path | None
    seq_buckets: tuple[int, ...]


class _Progress:
    """The export's stage bar, and the seconds each stage took (kept in ``manifest.validation["timings_s"]``)."""

    def __init__(self, stages: Sequence[str], enabled: bool):
        self.bar = tqdm(total=len(stages), desc="export", disable=not enabled, unit="stage")
        self.timings: dict[str, float] = {}

    def stage(self, name: str) -> None:
        self.bar.set_postfix_str(name)
        self.timings[name] = time.perf_counter()

    def done(self, name: str) -> None:
        self.timings[name] = round(time.perf_counter() - self.timings[name], 3)
        self.bar.update(1)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _export(job: _Job, progress: _Progress) -> Manifest:
    """The heavy half (torch from here on): load, quantize, trace, lower, validate, then write the manifest."""
    import torch  # deferred: loads torch (heavy; not needed at import)

    from cooperllm.modeling import build_task_model, theta_from_module  # deferred: loads torch
    from exporters.graph import ThetaInputs, export_program  # deferred: loads torch (heavy; not needed at import)
    from exporters.lower import to_onnx, to_pte  # deferred: loads torch (heavy; not needed at import)
    from exporters.quantize import quantize_frozen  # deferred: loads torch (heavy; not needed at import)
    from exporters.validate import EagerFunction, format_table, validate_graph  # deferred: loads torch

    progress.stage("load")
    try:
        encoder = PromptEncoder(job.model_dir / TOKENIZER_FILE, job.task, job.seq_len)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    try:
        lm = load_causal_lm(job.model_dir)
    except ValueError as exc:  # transformers: not a causal LM it knows ("Unrecognized configuration class …")
        raise ExportError(f"{job.model_dir} does not load as a causal LM: {exc}") from exc
    family = lm.config.model_type
    if family not in TESTED_FAMILIES:
        log.warning(
            "model_type %r is not among the tested families (%s): exporting it, validation decides",
            family,
            ", ".join(TESTED_FAMILIES),
        )
    try:
        module, layout = build_task_model(lm, encoder, job.adapter)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if not layout.names:
        raise ExportError("the task has no trainable tensor")
    adapter = job.adapter.for_family(lm.config.model_type) if job.adapter else None  # what the manifest records
    check_layer_blocks(lm.config, layout, adapter)
    theta0 = theta_from_module(module, layout)
    save_theta(job.out / INITIAL_ADAPTER_FILE, theta0, layout)
    shutil.copyfile(job.model_dir / TOKENIZER_FILE, job.out / TOKENIZER_FILE)
    progress.done("load")

    progress.stage("quantize")
    head = lm.get_output_embeddings()
    # xnnpack-qc8w: int8 weights kept whole for XNNPACK's f32-qc8w GEMMs (exporters/int8_xnnpack.py)
    if job.backend == "xnnpack-qc8w":
        from exporters.int8_xnnpack import quantize_qc8w  # deferred: loads torch (heavy; not needed at import)

        quantization = quantize_qc8w(module, embeddings=job.quantize_embeddings, skip=(head,) if head else ())
    elif job.gguf is not None:
        from exporters.gguf_q4 import quantize_from_gguf  # deferred: loads torch (heavy; not needed at import)

        quantization = quantize_from_gguf(
            module, lm.config, job.gguf, embeddings=job.quantize_embeddings, skip=(head,) if head else ()
        )
    else:
        quantization = quantize_frozen(
            module, job.scheme, embeddings=job.quantize_embeddings, skip=(head,) if head else ()
        )
    progress.done("quantize")

    progress.stage("trace")
    batch = validation_batch(encoder, job.batch_size, *([list(job.validation_texts)] if job.validation_texts else []))
    args = tuple(torch.from_numpy(a) for a in graph_inputs(batch, theta0, layout))
    wrapper = ThetaInputs(module, layout.names)
    try:
        min_seq_len = min(job.seq_buckets, default=None)  # None: a static graph
        program = export_program(wrapper, args, min_seq_len)
    except Exception as exc:  # torch.export's failures are many types; each names what it could not trace
        raise ExportError(
            f"torch.export cannot trace this model (model_type {family!r}): {type(exc).__name__}: {exc}"
        ) from exc
    progress.done("trace")

    input_names = [*DATA_INPUTS, *layout.names]
    graphs: list[GraphSpec] = []
    details: dict[str, dict] = {}
    for fmt in job.fmts:
        progress.stage(f"export {fmt}")
        name = graph_file(fmt)
        if fmt == "onnx":
            details[name] = {"onnx": to_onnx(program, input_names, job.out / name)}
            graphs.append(GraphSpec(name, "onnx", "ort", job.batch_size, job.seq_len, seq_buckets=job.seq_buckets))
        else:
            # to_edge consumes the program; re-export so a later ONNX export (if any) sees a fresh one
            prog = program if fmt == job.fmts[-1] else export_program(wrapper, args, min_seq_len)
            delegation = to_pte(prog, job.backend, job.out / name, dynamic_weights=job.scheme != "none")
            details[name] = {"delegation": delegation} if job.backend.startswith("xnnpack") else {}
            graphs.append(GraphSpec(name, "pte", job.backend, job.batch_size, job.seq_len, seq_buckets=job.seq_buckets))
        details[name]["file_mb"] = round((job.out / name).stat().st_size / 1e6, 3)
        progress.done(f"export {fmt}")

    validation: dict = {"checked": job.validate}
    failed = []
    if job.validate:
        progress.stage("validate")
        eager32 = EagerFunction(module, layout, torch.float32)
        eager64 = EagerFunction(module, layout, torch.float64)
        results = {}
        rows = {}  # the table: one row per graph and length
        for g in graphs:
            runner = open_runner(job.out / g.file, g.format)
            r = validate_graph(runner, eager32, eager64, batch, theta0)
            r.update(details[g.file])
            rows[g.file] = r
            r["buckets"] = {}
            for length in g.lengths[:-1]:  # the same checks on the batch's last `length` tokens
                short = validate_graph(runner, eager32, eager64, last_tokens(batch, length), theta0)
                r["buckets"][str(length)] = short
                rows[f"{g.file} @{length}"] = short
                r["passed"] = r["passed"] and short["passed"]
            results[g.file] = r
            if not r["passed"]:
                failed.append(g.file)
        validation["graphs"] = results
        validation["table"] = format_table(rows)
        validation["passed"] = not failed
        progress.done("validate")
        log.debug("validation:\n%s", validation["table"])
    else:
        validation["graphs"] = {name: d for name, d in details.items()}
    validation["timings_s"] = {k: v for k, v in progress.timings.items()}

    files = {p: sha256_file(job.out / p) for p in [TOKENIZER_FILE, INITIAL_ADAPTER_FILE, *(g.file for g in graphs)]}
    manifest = Manifest(
        # what later commands load the model from: the default's name, or the folder's absolute path
        model_name=str(job.model) if str(job.model) == "smollm2" else str(Path(job.model_dir).resolve()),
        task=job.task,
        adapter=adapter,
        layout=layout,
        graphs=graphs,
        input_names=input_names,
        output_names=list(OUTPUTS),
        label_token_ids=list(encoder.label_token_ids),
        pad_token_id=int(encoder.pad_id),
        tokenizer_file=TOKENIZER_FILE,
        initial_adapter_file=INITIAL_ADAPTER_FILE,
        quantization=quantization,
        files=files,
        validation=validation,
    )
    if failed and not job.force:
        raise ExportError(
            f"validation failed for {', '.join(failed)}; no manifest written (pass --force to keep it anyway):\n"
            + validation["table"]
        )
    write_manifest(job.out, manifest)
    return manifest
