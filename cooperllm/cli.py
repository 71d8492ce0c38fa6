"""``cooperllm`` command line: one subcommand per job, each defined next to the code it drives.

Command modules are imported lazily by name and must be cheap to import (no torch at module level); each exposes
``register(subparsers)`` and may expose ``register_bench(bench_subparsers)`` for ``cooperllm bench <name>``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "cooperllm.commands.eval",
    "cooperllm.commands.bench",
    "cooperllm.commands.demo",
    "cooperllm.commands.simulate",
    "cooperllm.commands.report",
    "cooperllm.commands.bench_dtc",
    "cooperllm.commands.link_proxy",
    "exporters.cli",
    "cloud_api.cli",
    "device_runtime.cli",
    "device_runtime.native.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cooperllm",
        description="Cloud-edge cooperative federated fine-tuning of LLMs on phones (zeroth-order on the device, "
        "backprop guidance from the cloud).",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks: speed, memory and size, as ratios against a baseline")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(sub)
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Set up logging and run the chosen command; bad input becomes a one-line error and exit code 2."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("torchao", "torch._export", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
