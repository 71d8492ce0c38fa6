"""``python -m device_runtime train|run``: the device commands alone, without the rest of the ``cooperllm`` CLI.

A device process should load only what a phone would have: this entry point registers the device commands only
(``cooperllm`` itself is torch-free at start too, but parses every command) and never imports torch on the
ONNX/native paths.
"""

from __future__ import annotations

import argparse
import sys

from cooperllm.console import add_log_level, run_parsed
from device_runtime.cli import register_device_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_runtime", description="CooperLLM device runtime")
    add_log_level(parser)
    register_device_commands(parser.add_subparsers(dest="device_command", metavar="COMMAND", required=True))
    return run_parsed(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
