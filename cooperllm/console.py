"""What every command-line entry point shares: logging set-up and turning bad input into a one-line error.

Lives in the core so that both the ``cooperllm`` CLI (application layer) and the torch-free device entry point
``python -m device_runtime`` use the same exit codes without the device importing the application layer.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# third-party loggers that are chatty at INFO (alembic: each plugin and migration step it sets up; cloud_api.schema
# says what it migrated in its own words); they still speak at WARNING and above
_NOISY_LOGGERS = ("torchao", "torch._export", "httpx", "alembic")


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="logging verbosity")


def fail(message: object, code: int) -> int:
    """Print ``error: <message>`` on stderr and return ``code``: how every entry point turns a refusal into its
    exit status (one line, no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def quiet_third_party() -> None:
    """Silence the third-party messages a run prints that say nothing about it, each named and why it is harmless,
    so that a user's terminal shows the project's own progress and results. Anything else still gets through.

    Set before the libraries are imported (they are imported lazily by the commands that need them)."""
    # transformers' and huggingface_hub's own progress bars ("Loading weights", "Writing model shards") interleave
    # with the project's bars for the same work; the project reports its stages itself. Read at their import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torchao, at import: its CUDA kernels (_C_mxfp8, _C_cutlass_90a) and Triton are absent from this CPU build; the
    # project's int8 weight-only path uses neither. Real torchao errors stay visible.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    # torch, at torchao's import: torchao registers two Enum classes with torch's pytree in a way torch 2.13 calls
    # deprecated; a notice about torchao's code, with no effect on export or on what the graphs compute.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # torch, while ExecuTorch lowers a graph: a pytree spec object is copied through a deprecated isinstance check
    # inside torch; the lowered program does not depend on it (the exporter's tests compare it with eager).
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def run_parsed(args: argparse.Namespace) -> int:
    """Set up logging and run the chosen command; bad input becomes a one-line error and exit code 2."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(
            max(logging.getLogger(noisy).level, logging.WARNING, logging.getLogger().level)
        )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        return fail(exc, 2)


# XNNPACK's CPU probe (ExecuTorch's cpuinfo_utils.cpp) logs each ARM identification file it cannot open on an x86
# machine or in a VM ("[cpuinfo_utils.cpp:87] Failed to open midr file ...", or from the native runner's build
# "I 00:00:00.001 executorch:cpuinfo_utils.cpp:87] ..."): it then falls back to the generic kernels the graph was
# validated with, so the lines say nothing about the run. They are written by C++ straight to file descriptor 2 while
# a program loads; every other line written there is passed on unchanged.
_CPU_PROBE_LINE = re.compile(rb"^(\[|[DI] [\d:.]+ executorch:)cpuinfo_utils\.cpp:\d+\] ")


@contextlib.contextmanager
def without_cpu_probe_lines() -> Iterator[None]:
    """Run the block with file descriptor 2 captured, then pass on what it wrote less the CPU probe's lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not _CPU_PROBE_LINE.match(line)]
            if kept:
                sys.stderr.buffer.write(b"".join(kept))
                sys.stderr.flush()
