"""``python -m device_runtime train|run``: the device commands alone, without the rest of the ``cooperllm`` CLI.

``cooperllm`` imports every command module at start (exporters, cloud); a device process should load only what a
phone would have, so this entry point registers the device commands only and never imports torch on the ONNX path.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from device_runtime.cli import register_device_commands

    parser = argparse.ArgumentParser(prog="python -m device_runtime", description="CooperLLM device runtime")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    register_device_commands(parser.add_subparsers(dest="device_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
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
