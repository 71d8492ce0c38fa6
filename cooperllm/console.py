"""What every command-line entry point shares: logging set-up and turning bad input into a one-line error.

Lives in the core so that both the ``cooperllm`` CLI (application layer) and the torch-free device entry point
``python -m device_runtime`` use the same exit codes without the device importing the application layer.
"""

from __future__ import annotations

import argparse
import logging
import sys

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# third-party loggers that are chatty at INFO; they still speak at WARNING and above
_NOISY_LOGGERS = ("torchao", "torch._export", "httpx")


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="logging verbosity")


def fail(message: object, code: int) -> int:
    """Print ``error: <message>`` on stderr and return ``code``: how every entry point turns a refusal into its
    exit status (one line, no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def run_parsed(args: argparse.Namespace) -> int:
    """Set up logging and run the chosen command; bad input becomes a one-line error and exit code 2."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        return fail(exc, 2)
