"""Phone-like memory budget: a hard address-space cap (RLIMIT_AS) plus a fail-fast check before any work.

Phones kill an app that outgrows its per-app limit. Here the cap is RLIMIT_AS (no writable cgroup is available to an
unprivileged process on this kind of host); address space is always ≥ resident memory, so the cap is conservative.
Before loading, the graph file size plus what the process already maps is compared with the budget; the load and
one warm-up forward pass then run under the cap, so an artifact that does not fit fails at start with a message
naming the need and the budget — never an OOM kill half-way through a round.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import resource
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1 << 20


class MemoryBudgetError(MemoryError):
    """The artifact cannot run within the budget; the message names both."""


def tame_heap() -> bool:
    """On glibc: a fixed mmap threshold (128 KiB) and at most two malloc arenas. Returns whether both took.

    Why: glibc raises its mmap threshold to the size of each large block freed, so the device's per-block buffers
    (guidance bases, θ copies, ~0.25–2 MB each) move from mmap onto the heaps, and every thread (guidance fetcher,
    uploader, long polls) gets a heap of its own: a process that runs round after round then keeps growing its
    resident set with freed, fragmented memory (measured: ~20 MB a round for a SmolLM2 zgr device). A phone's
    allocator (Android's scudo) does neither; elsewhere (not glibc) this is a no-op.
    """

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # glibc <malloc.h>
    return mallopt(m_mmap_threshold, 128 * 1024) == 1 and mallopt(m_arena_max, 2) == 1


def _status_kb(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def mapped_mb() -> float:
    """Current address space (VmSize), what RLIMIT_AS counts."""
    return _status_kb("VmSize") / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set of a process's own address space (VmHWM; this process unless ``pid`` names another).

    Not ``ru_maxrss``: Linux carries the pre-exec high-water mark into it, so a process spawned by a big parent
    (pytest or a CLI with torch loaded) would report the parent's peak.
    """
    return _status_kb("VmHWM", pid) / 1024


def graph_bytes(folder: Path, files: list[str]) -> int:
    return sum(os.path.getsize(Path(folder) / f) for f in files)


def precheck(budget_mb: float, folder: Path, graph_files: list[str], theta_values: int) -> float:
    """Fail fast when the graph alone (plus what is already mapped and θ's working copies) exceeds the budget."""
    need = mapped_mb() + graph_bytes(folder, graph_files) / MB + 3 * theta_values * 4 / MB
    if need > budget_mb:
        raise MemoryBudgetError(
            f"the artifact needs at least {need:.0f} MB (graph {graph_bytes(folder, graph_files) / MB:.0f} MB + "
            f"runtime {mapped_mb():.0f} MB) but the memory budget is {budget_mb:.0f} MB"
        )
    return need


def apply_cap(budget_mb: float) -> None:
    """Lower RLIMIT_AS (soft and hard) to the budget: from here on the process cannot grow past it."""
    if budget_mb <= 0:
        raise ValueError(f"memory budget must be > 0 MB, got {budget_mb}")
    limit = int(budget_mb * MB)
    if mapped_mb() * MB > limit:
        raise MemoryBudgetError(
            f"the runtime already maps {mapped_mb():.0f} MB, more than the memory budget of {budget_mb:.0f} MB"
        )
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    log.info("memory budget: address space capped at %.0f MB", limit / MB)


def budget_failure(budget_mb: float, stage: str, exc: BaseException) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"the artifact does not fit the memory budget of {budget_mb:.0f} MB: {stage} failed with the process at "
        f"{mapped_mb():.0f} MB mapped, {peak_rss_mb():.0f} MB peak resident ({type(exc).__name__}: {exc})"
    )
