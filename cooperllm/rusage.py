"""Peak resident set from ``getrusage``, in MB, read one way everywhere.

``ru_maxrss`` is in kilobytes on Linux but in bytes on macOS; dividing by 1024 at each call site is right on one and
wrong by 1024× on the other. Note that on Linux it also carries the pre-exec high-water mark of a spawned process
(see ``device_runtime.budget.peak_rss_mb`` for a process's own VmHWM).
"""

from __future__ import annotations

import resource
import sys

MB = 1 << 20
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # bytes per ru_maxrss unit


def maxrss_mb(usage: resource.struct_rusage | None = None) -> float:
    """``ru_maxrss`` of ``usage`` (default: this process, ``RUSAGE_SELF``) in MB of 2^20 bytes."""
    if usage is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss * _MAXRSS_UNIT / MB
