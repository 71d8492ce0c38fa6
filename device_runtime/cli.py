"""The device runtime's commands, ``train`` and ``run`` (``python -m device_runtime``; ``cooperllm device``).

Cheap to import (no torch, no onnxruntime at module level): the CLI imports every command module at start.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cooperllm.checkpoint import save_theta
from cooperllm.console import fail
from cooperllm.datafile import add_column_options
from cooperllm.layout import theta_checksum
from device_runtime.backends.base import BackendError
from device_runtime.budget import MemoryBudgetError, peak_rss_mb
from device_runtime.corpus import CorpusSource
from device_runtime.engine import ZOConfig
from device_runtime.session import open_session
from device_runtime.train import TrainConfig, train

log = logging.getLogger(__name__)

EXIT_BUDGET = 3
EXIT_BACKEND = 4
EXIT_REFUSED = 5  # the client refuses to train (artifact mismatch, unsupported strategy, failed run)
EXIT_UNREACHABLE = 6
EXIT_REJECTED = 7  # the cloud answered with an error


def register_device_commands(dsub: argparse._SubParsersAction) -> None:
    """``train`` and ``run``; shared by ``cooperllm device`` and the torch-free ``python -m device_runtime``."""
    _register_train(dsub)
    from device_runtime.client_cli import register_run  # here, not at the top: client_cli imports this module

    register_run(dsub)


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", required=True, help="exported artifact folder (manifest.json, graph, tokenizer)")
    p.add_argument("--data", required=True, help="the device's private training data (TSV or JSONL)")
    add_column_options(p)
    p.add_argument(
        "--backend",
        choices=["onnx", "native", "executorch", "eager"],
        help="graph backend (default: the manifest's first graph): onnx (ONNX Runtime), native (torch-free "
        "ExecuTorch runner), executorch (its Python runtime, loads libtorch), eager (the PyTorch fp32 reference)",
    )
    p.add_argument("--model-dir", help="HF model folder for the eager backend (default: the manifest's model)")
    p.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime")
    p.add_argument(
        "--memory-budget",
        type=float,
        metavar="MB",
        help="run under a hard memory cap like a phone's per-app limit (RLIMIT_AS); fails fast if the artifact "
        "cannot fit",
    )
    p.add_argument("--state", help="folder for the resumable device state (θ, counters, pending reports)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _register_train(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "train",
        help="federated-free MeZO on one device (standalone mode)",
        description="Zeroth-order fine-tuning (MeZO: two forward passes per step along a seeded perturbation) of the "
        "exported graph on one device, with periodic evaluation. Resumable with --state.",
    )
    add_device_options(p)
    p.add_argument("--steps", type=int, required=True, help="total ZO steps (a resumed run continues up to it)")
    p.add_argument("--eval", dest="eval_data", help="labelled file to evaluate on before, during and after")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: before/after only)")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N examples only")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument(
        "--lr-half-life",
        type=int,
        default=0,
        metavar="STEPS",
        help="halve the learning rate every STEPS steps, smoothly (default 0: constant)",
    )
    p.add_argument("--eps", type=float, default=1e-3, help="perturbation scale ε (default 1e-3)")
    p.add_argument("--schedule", choices=["all", "cycle"], default="all", help="all blocks per step, or cycling")
    p.add_argument(
        "--blocks",
        help="with --schedule cycle: comma-separated blocks to train, by index or name (e.g. 'head' or "
        "'layer.29,head'); default every block",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed of the perturbations (default 0)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the batch order (default 0)")
    p.add_argument("--save-every", type=int, default=10, help="steps between state saves (default 10)")
    p.add_argument("--out", help="write the trained θ (safetensors) here")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run_train)


def parse_blocks(spec: str | None, layout) -> tuple[int, ...] | None:
    """'head,layer.29,3' -> block indices; None when no subset is asked for."""
    if not spec:
        return None
    by_name = {b.name: b.index for b in layout.blocks}
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item in by_name:
            out.append(by_name[item])
        elif item.isdigit() and int(item) < len(layout.blocks):
            out.append(int(item))
        else:
            raise ValueError(f"unknown block {item!r}; blocks are 0..{len(layout.blocks) - 1} or {sorted(by_name)}")
    return tuple(out)


def corpus_source(args: argparse.Namespace, path: str, limit: int | None = None):
    """``path`` read with the shared column options (first ``limit`` rows), for ``open_session(data=...)``."""
    return CorpusSource(path, args.text_column, args.label_column, limit, args.header)


def open_session_or_report(args: argparse.Namespace, data: dict | None = None):
    """The session from the shared device options, or the exit code after a one-line error (budget, backend).

    ``data`` maps names to data sources, which the session turns into token-id corpora (``session.corpora``).
    """
    try:
        return open_session(
            args.artifacts,
            args.backend,
            data=data,
            memory_budget_mb=args.memory_budget,
            model_dir=args.model_dir,
            threads=args.threads,
        )
    except MemoryBudgetError as exc:
        return fail(exc, EXIT_BUDGET)
    except BackendError as exc:
        return fail(exc, EXIT_BACKEND)


def run_train(args: argparse.Namespace) -> int:
    loaders = {"train": corpus_source(args, args.data)}
    if args.eval_data:
        loaders["eval"] = corpus_source(args, args.eval_data, args.eval_limit)
    session = open_session_or_report(args, loaders)
    if isinstance(session, int):
        return session
    data, eval_data = session.corpora["train"], session.corpora.get("eval")
    cfg = TrainConfig(
        steps=args.steps,
        zo=ZOConfig(
            lr=args.lr,
            eps=args.eps,
            schedule=args.schedule,
            seed=args.seed,
            blocks=parse_blocks(args.blocks, session.manifest.layout),
        ),
        data_seed=args.data_seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        lr_half_life=args.lr_half_life,
    )
    backend = session.backend
    print(
        f"device train: {backend.describe()}, θ {session.manifest.layout.total:,} values, "
        f"{len(data):,} training examples, loaded in {session.load_seconds:.1f} s",
        file=sys.stderr,
    )
    try:
        result = train(
            backend,
            data,
            cfg,
            eval_data=eval_data,
            state_dir=args.state,
            progress=not args.no_progress,
        )
    except MemoryError as exc:
        return fail(f"out of memory during training ({exc}); raise --memory-budget", EXIT_BUDGET)
    if args.out:
        save_theta(args.out, result.theta, session.manifest.layout, {"steps": result.steps_done})
    steps_run = result.steps_done - result.resumed_from
    change = result.change()
    summary = {
        "backend": backend.name,
        "steps": result.steps_done,
        "steps_this_run": steps_run,
        "resumed_from": result.resumed_from,
        "skipped": result.skipped,
        "train_seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds / steps_run, 4) if steps_run else None,
        "first_loss": result.losses[0][1] if result.losses else None,
        "last_loss": result.losses[-1][1] if result.losses else None,
        "evals": [{"step": s, "accuracy": e.accuracy, "loss": e.loss, "n": e.n_examples} for s, e in result.evals],
        "vs_first_eval": None if change is None else {"step": result.evals[0][0], **change.to_dict()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "theta_sha256": theta_checksum(result.theta),
        "torch_loaded": "torch" in sys.modules,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"steps      {result.steps_done} ({steps_run} this run, {result.seconds:.1f} s, "
            f"{summary['seconds_per_step']} s/step, {result.skipped} dropped)"
        )
        if result.losses:
            print(f"train loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} (mean of L+ and L-)")
        for s, e in result.evals:
            print(f"eval @{s:<6} accuracy {e.accuracy * 100:.2f} %  loss {e.loss:.4f}  ({e.n_examples} examples)")
        if change is not None:
            print(
                f"vs step {result.evals[0][0]}: {change.gained} predictions turned right, {change.lost} wrong "
                f"(exact McNemar p = {change.p_value:.2g})"
            )
        print(f"peak RSS   {summary['peak_rss_mb']} MB")
        if args.out:
            print(f"adapter    {args.out}")
    return 0
