"""Third-party noise is silenced by name only: the named messages go, everything else still reaches the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_named_warnings_and_loggers_are_silenced_and_others_are_not():
    out = _run(
        """
        import logging, warnings
        from cooperllm.console import quiet_third_party
        logging.basicConfig(level=logging.INFO)
        quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("some other future change", FutureWarning)
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8")
        logging.getLogger("torchao").error("a real torchao error")
        logging.getLogger("torch.utils._pytree").warning("Enum subclass register_constant")
        logging.getLogger("cooperllm").warning("our own warning")
        """
    )
    assert out.returncode == 0, out.stderr
    assert "LeafSpec" not in out.stderr and "_C_mxfp8" not in out.stderr and "register_constant" not in out.stderr
    assert "some other future change" in out.stderr
    assert "a real torchao error" in out.stderr and "our own warning" in out.stderr


def test_cpuinfo_probe_lines_are_dropped_and_other_native_stderr_passes():
    out = _run(
        """
        import os
        from cooperllm.console import without_cpu_probe_lines
        with without_cpu_probe_lines():
            os.write(2, b"[cpuinfo_utils.cpp:87] Failed to open midr file /sys/x\\n")
            os.write(2, b"I 00:00:00.001006 executorch:cpuinfo_utils.cpp:87] Failed to open midr file /sys/x\\n")
            os.write(2, b"E 00:00 method.cpp:1 a real runtime error\\n")
        """
    )
    assert out.returncode == 0
    assert "cpuinfo_utils" not in out.stderr
    assert "a real runtime error" in out.stderr
