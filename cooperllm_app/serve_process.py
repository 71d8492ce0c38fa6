"""``cooperllm serve`` as a child process, for benchmarks that need a real cloud beside the code they measure.

The server then spends its own CPU in its own process (measurable from ``/proc``, and not mixed into the caller's
timings), and the caller needs none of the cloud's imports. The child prints one ready line once its model has
loaded; :func:`start_serve` waits for it and returns the base URL.
"""

from __future__ import annotations

import subprocess
import sys

READY_PREFIX = "cooperllm cloud listening on "


def start_serve(options: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``cooperllm serve --port 0 --env test OPTIONS…``; returns the process and its ``http://host:port``."""
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "--log-level", "WARNING", "serve", "--port", "0", "--env", "test"]
    proc = subprocess.Popen([*cmd, *options], stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait(timeout=30)
        raise RuntimeError(f"the cloud did not start: {line!r} (exit code {proc.returncode})")
    return proc, line[len(READY_PREFIX) :].split()[0].removesuffix("/v1")


def stop_serve(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
