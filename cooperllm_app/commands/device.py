"""``cooperllm device train|run``: the device runtime's own commands (``python -m device_runtime``) under the
``cooperllm`` CLI."""

from __future__ import annotations

import argparse

from device_runtime.cli import register_device_commands


def register(sub: argparse._SubParsersAction) -> None:
    device = sub.add_parser("device", help="the device runtime: standalone ZO training, or a federated device client")
    register_device_commands(device.add_subparsers(dest="device_command", metavar="DEVICE_COMMAND", required=True))
