"""The state the round engine's parts share: the open round (``RoundState``) and the service-wide context.

``EngineContext`` is what every part of the engine (run lifecycle, uploads, round clock, aggregation) holds: the model
host, the database, the state folder, the one lock that orders changes of the round, the counters for ``/metrics``,
and the waiters of long polls. Parts are composed around it rather than inheriting from each other.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from cloud_api.errors import ServiceError
from cloud_api.model_host import ModelHost
from cloud_api.waiters import RoundWaiters
from cooperllm.protocol import WIRE_SEEDS, GuidanceRef, RunConfig
from cooperllm.rectify import RectifierState
from cooperllm.strategies import RoundPlan, Strategy, get_strategy

SEEDS_PER_DEVICE = 1 << 16


SEED_KEY_FILE = "seed.key"


def load_seed_key(state_dir: Path) -> bytes:
    """The server's secret for seed ranges (32 random bytes in ``state_dir``, mode 0600), made on first start and
    kept, so a restarted server hands every device the same range for an open round."""
    path = state_dir / SEED_KEY_FILE
    ensure_seed_key(state_dir, secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path} is not a 32-byte seed key: remove it only if no run is open")
    return key


def ensure_seed_key(state_dir: Path, key: bytes) -> None:
    """Store ``key`` as the seed key unless ``state_dir`` already has one (a key, once used, is kept: it names the
    seed ranges of open rounds). Mode 0600, written whole: temp file, fsync, rename."""
    path = state_dir / SEED_KEY_FILE
    if path.is_file():
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seed_range(key: bytes, run_seed: int, run_id: int, round_: int, device_id: int) -> tuple[int, int]:
    """This device's seeds for the round: a 2^16-wide slice of [0, 2^52) chosen by a keyed hash of (run, round,
    device). Keyed with the server's secret, so a published round's seeds do not tell which device sent a report."""
    h = hashlib.blake2b(f"{run_seed}:{run_id}:{round_}:{device_id}".encode(), digest_size=8, key=key).digest()
    lo = (int.from_bytes(h, "little") % (WIRE_SEEDS // SEEDS_PER_DEVICE)) * SEEDS_PER_DEVICE
    return lo, lo + SEEDS_PER_DEVICE


@dataclass
class RoundState:
    run_id: int
    round: int
    cfg: RunConfig
    blocks: list[int]
    status: str  # open | closing | closed | failed | finished
    opened_at: float
    deadline: float
    extensions: int
    theta: np.ndarray
    checksum: str
    seen: dict[int, set[tuple[int, int, int]]] = field(default_factory=dict)  # device → its (seed, block, step)
    per_device: dict[int, int] = field(default_factory=dict)
    guidance: list[GuidanceRef] = field(default_factory=list)
    n_complete: int = 0
    carried: RectifierState | None = None  # what the rectifier carried out of the round before (None: round 0)
    resume_close: bool = False  # restored while stored as 'closing': its leader stopped mid-close; close it first

    @property
    def strategy(self) -> Strategy:
        return get_strategy(self.cfg.strategy)

    @cached_property
    def plan(self) -> RoundPlan:
        """Computed once: cfg, blocks and the carried state never change within a round, and uploads read it on every
        batch."""
        return self.strategy.configure_round(self.cfg, self.blocks, self.round, self.carried)

    @property
    def expected_per_device(self) -> int:
        return self.plan.uploads_per_device

    def complete_devices(self) -> int:
        need = self.expected_per_device
        return sum(1 for n in self.per_device.values() if n >= need)


COUNTER_NAMES = (
    "uploads_total",
    "idempotent_replays",
    "duplicates",
    "late_reports",
    "rounds_closed",
    "rounds_failed",
    "rounds_extended",
)


@dataclass
class EngineContext:
    host: ModelHost
    db: Engine
    state_dir: Path
    seed_key: bytes
    lock: threading.RLock = field(default_factory=threading.RLock)
    state: RoundState | None = None
    run_status: str | None = None
    run_failure: str | None = None
    started: float = field(default_factory=time.time)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    rejected: dict[str, int] = field(default_factory=dict)
    last_lambda: float | None = None
    wake: threading.Event = field(default_factory=threading.Event)  # the round clock looks now rather than later
    waiters: RoundWaiters = field(default_factory=RoundWaiters)
    shared: bool = False  # workers share the database: uploads are counted there, one leader closes rounds

    def adapter_path(self, run_id: int, version: int) -> Path:
        return self.state_dir / f"run{run_id}" / "adapters" / f"v{version:06d}.safetensors"

    def current(self) -> RoundState:
        st = self.state
        if st is None:
            raise ServiceError(404, "no_run")
        return st

    def reject(self, status: int, key: str, detail: str | None = None) -> ServiceError:
        """A refusal counted in ``/metrics`` under its key."""
        self.rejected[key] = self.rejected.get(key, 0) + 1
        return ServiceError(status, key, detail)
