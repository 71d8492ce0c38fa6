"""``cooperllm`` command line: one subcommand per job, each in its own module under ``cooperllm_app.commands``, and
one benchmark per module under ``cooperllm_app.bench`` (``cooperllm bench <name>``).

Command modules must be cheap to import (no torch at module level): the parser imports every one of them at start.
Each command module exposes ``register(subparsers)``, each benchmark module ``register_bench(bench_subparsers)``.
"""

from __future__ import annotations

import argparse
import sys

from cooperllm.console import add_log_level, run_parsed
from cooperllm_app.bench import adapter, cloud, device, dtc, export, health, memory, perturb, pipeline, simulation
from cooperllm_app.commands import adapter as adapter_command
from cooperllm_app.commands import admin, demo, link_proxy, predict, report, serve, simulate
from cooperllm_app.commands import device as device_command
from cooperllm_app.commands import eval as eval_command
from cooperllm_app.commands import export as export_command

COMMANDS = (
    eval_command,
    export_command,
    serve,
    admin,
    device_command,
    simulate,
    predict,
    adapter_command,
    report,
    demo,
    link_proxy,
)
BENCHMARKS = (perturb, dtc, export, cloud, health, memory, pipeline, device, adapter, simulation)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cooperllm",
        description="Cloud-edge cooperative federated fine-tuning of LLMs on phones (zeroth-order on the device, "
        "backprop guidance from the cloud).",
    )
    add_log_level(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    bench = sub.add_parser("bench", help="benchmarks: speed, memory and size, as ratios against a baseline")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module in BENCHMARKS:
        module.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
