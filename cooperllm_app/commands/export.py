"""``cooperllm export``: the exporter's command line, spelled like ``optimum-cli export`` where it can be."""

from __future__ import annotations

import argparse
import sys

from cooperllm.adapter import AUTO, AdapterSpec
from cooperllm.console import fail
from cooperllm.data import load_dataset
from cooperllm.datafile import add_column_options
from cooperllm_app.commands.options import add_model_options, add_task_options, task_from_args
from exporters import ExportError, export_artifacts
from exporters.api import resolve_backend


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a quantized loss graph (.pte / .onnx) with the adapters as inputs, plus its manifest",
        description="Export f(input_ids, attention_mask, labels, θ...) -> (loss, label_logits) of a causal LM with "
        "LoRA adapters (and a seq-cls head) as graph inputs; frozen weights are quantized weight-only and kept as "
        "constants. Every export is validated (runtime vs eager loss, ZO finite-difference fidelity vs fp64); a "
        "failed check exits non-zero unless --force.",
    )
    add_model_options(p)
    add_task_options(p)
    p.add_argument("--out", "--output", dest="out", required=True, help="artifact folder to write")
    p.add_argument("--format", default="pte", help="pte, onnx, all, or a comma-separated list (default pte)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "xnnpack", "portable", "xnnpack-qc8w"],
        help="ExecuTorch backend for pte; auto (default) picks xnnpack-qc8w (fp32 activations × int8 weights in "
        "XNNPACK, the fast path) for an int8 pte-only export, else xnnpack",
    )
    p.add_argument(
        "--quant",
        default="int8",
        help="frozen-weight quantization: none, int8 (per-channel, default), int4 (group-wise) or gguf-q4 (the "
        "source GGUF's own Q4_0/Q4_1 blocks, exact); dynamic-activation schemes (8da4w, 8da8w, quantize_dynamic) are "
        "refused",
    )
    p.add_argument(
        "--gguf",
        help="the GGUF whose 4-bit blocks --quant gguf-q4 keeps (default: the default model's, or the one .gguf in "
        "the model folder)",
    )
    p.add_argument(
        "--seq-buckets",
        help="comma-separated length buckets up to --seq-len, e.g. 32,64: one program with a dynamic sequence "
        "length, which a device runs at the smallest bucket holding each batch (default: --seq-len only)",
    )
    p.add_argument("--no-embedding-quant", action="store_true", help="keep the embedding table fp32 under int8/int4")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument(
        "--lora-targets",
        default=AUTO,
        help="comma-separated module names; auto (default) picks the family's query and value projections: "
        "q_proj,v_proj (Llama, Qwen2, Gemma, Mistral), qkv_proj (Phi-3), c_attn (GPT-2)",
    )
    p.add_argument("--no-lora", action="store_true", help="no adapters: only the seq-cls head is trainable")
    p.add_argument("--lora-seed", type=int, default=0, help="seed of the initial LoRA A matrices (default 0)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=8, help="examples per call (default 8)")
    p.add_argument(
        "--data",
        help="the task's labelled training file (TSV, CSV or JSONL): its labels become the task's classes (recorded "
        "in the manifest, read by every later command) and its first texts fill the validation batch (default: "
        "SST-2's classes, built-in texts)",
    )
    add_column_options(p)
    p.add_argument("--no-validate", action="store_true", help="skip parity and fidelity checks (not recommended)")
    p.add_argument("--force", action="store_true", help="write the manifest even when a check fails")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _buckets(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ExportError(f"--seq-buckets takes comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    dataset = None
    if args.data:
        names = args.label_names.split(",") if args.label_names else None
        dataset = load_dataset(args.data, args.text_column, args.label_column, names, args.header)
    task = task_from_args(args, dataset.label_names if dataset else None)
    adapter = None
    if not args.no_lora:
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        adapter = AdapterSpec(rank=args.lora_rank, alpha=args.lora_alpha, targets=targets, init_seed=args.lora_seed)
    texts = dataset.texts[: args.batch] if dataset else None
    formats = [f.strip() for f in args.format.split(",")]
    try:
        manifest = export_artifacts(
            args.model,
            args.out,
            task=task,
            adapter=adapter,
            formats=formats,
            backend=resolve_backend(args.backend, formats, args.quant),
            quant=args.quant,
            batch_size=args.batch,
            seq_len=args.seq_len,
            validate=not args.no_validate,
            force=args.force,
            progress=not args.no_progress,
            quantize_embeddings=not args.no_embedding_quant,
            validation_texts=texts,
            gguf=args.gguf,
            seq_buckets=_buckets(args.seq_buckets),
        )
    except ExportError as exc:
        return fail(exc, 1)
    v = manifest.validation
    if v.get("table"):
        print(v["table"])
    for g in manifest.graphs:
        print(f"wrote {args.out}/{g.file} ({g.format}, {g.backend}, batch {g.batch_size} x seq {g.seq_len})")
    print(
        f"manifest {args.out}/manifest.json: {len(manifest.layout.names)} trainable tensors, "
        f"θ size {manifest.layout.total:,}, quant {manifest.quantization['scheme']}"
    )
    print(f"task     {task.mode}, {task.num_classes} classes: {', '.join(task.label_names)}")
    if v.get("checked") and not v.get("passed"):
        print("WARNING: validation failed; manifest written because of --force", file=sys.stderr)
    return 0
