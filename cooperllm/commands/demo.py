"""``cooperllm demo``: the main job end to end on the embedded defaults (SmolLM2, SST-2).

Today: the zero-shot SST-2 floor of the default model. It grows into the full federated demo (export, embedded
cloud, devices, accuracy before/after) as those parts land.
"""

from __future__ import annotations

import argparse

from cooperllm.data import shared_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on the embedded defaults (SmolLM2, SST-2)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test examples")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cooperllm.commands import eval as eval_command

    print("CooperLLM demo: zero-shot SmolLM2-135M-Instruct on SST-2 (the floor fine-tuning must beat)")
    eval_args = [
        "--data",
        str(shared_data_dir() / "sst2" / "test.tsv"),
    ]
    if args.limit is not None:
        eval_args += ["--limit", str(args.limit)]
    parser = argparse.ArgumentParser()
    eval_sub = parser.add_subparsers()
    eval_command.register(eval_sub)
    return eval_command.run(parser.parse_args(["eval", *eval_args]))
