"""``cooperllm eval``: accuracy and loss of a model (zero-shot, or with a trained adapter) on a labelled file."""

from __future__ import annotations

import argparse
import functools
import json

from cooperllm.adapter import AdapterSpec
from cooperllm.data import load_dataset
from cooperllm.evaluate import evaluate
from cooperllm.models import TOKENIZER_FILE, load_causal_lm, resolve_model
from cooperllm.tokenization import PromptEncoder
from cooperllm_app.commands.options import add_data_options, add_model_options, add_task_options, task_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a labelled file (eager PyTorch)",
        description="Evaluate a causal LM on a text-classification file: accuracy (argmax over label logits) and "
        "mean cross-entropy loss. Without --adapter this is the zero-shot floor that fine-tuning must beat.",
    )
    add_model_options(p)
    add_data_options(p, default_data="sst2/test.tsv")
    add_task_options(p)
    p.add_argument("--adapter", help="safetensors file of trained θ (LoRA and head) to load before evaluating")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass (default 16)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cooperllm.modeling import build_task_model, forward_at, load_theta_into, theta_from_module  # imports torch

    task = task_from_args(args)
    model_dir = resolve_model(args.model)
    dataset = load_dataset(args.data, args.text_column, args.label_column, task.label_names, args.header)
    if args.limit is not None:
        dataset = dataset.subset(range(min(args.limit, len(dataset))))
    encoder = PromptEncoder(model_dir / TOKENIZER_FILE, task, args.seq_len)
    adapter = AdapterSpec() if args.adapter else None
    module, layout = build_task_model(load_causal_lm(model_dir), encoder, adapter)
    theta = load_theta_into(module, layout, args.adapter) if args.adapter else theta_from_module(module, layout)
    run_fn = functools.partial(forward_at, module, layout)
    result = evaluate(run_fn, theta, encoder.tokenize(dataset), args.batch_size)
    if args.json:
        print(json.dumps({"accuracy": result.accuracy, "loss": result.loss, "n": result.n_examples}))
    else:
        print(f"model     {model_dir}")
        print(f"data      {args.data} ({result.n_examples} examples, task {task.mode})")
        print(f"accuracy  {result.accuracy * 100:.2f} %")
        print(f"loss      {result.loss:.4f}")
    return 0
