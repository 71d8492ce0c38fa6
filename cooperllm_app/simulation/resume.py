"""The run folder as the simulation's memory: one simulation at a time, fixed device shards, fixed public data.

Everything a restart needs is on disk under RUN_DIR: ``config.json`` (the run), ``partition.json`` (each device's
examples), ``cloud/`` (the service's SQLite database and adapter versions: the cloud resumes its run by itself),
``devices/dNNN/`` (each device's durable state), ``journal.jsonl`` and ``metrics.jsonl`` (what was measured).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from cooperllm.data import load_dataset, partition, public_split

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
PARTITION_FILE = "partition.json"
PUBLIC_FILE = "public.tsv"


class RunLock:
    """An exclusive ``flock`` on RUN_DIR/.lock, inherited by the simulation's children (``fd``): a restarted
    simulation waits until every process of the previous one has exited."""

    def __init__(self, run_dir: Path, wait_s: float = 60.0):
        self.path = run_dir / LOCK_FILE
        self.wait_s = wait_s
        self.fd = -1

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RuntimeError(
                        f"{self.path.parent} is in use by another simulation (or its last processes are still "
                        "exiting); wait for it or use another --out"
                    ) from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def ensure_partition(run_dir: Path, train_data: str, label_names, clients: int, spec: str, seed: int) -> list[int]:
    """Deal the private training data out to the devices once (seeded) and keep it; returns the shard sizes."""
    path = run_dir / PARTITION_FILE
    if not path.is_file():
        data = load_dataset(train_data, label_names=label_names)
        shards = partition(data, clients, spec, seed)
        _atomic_json(
            path, {"spec": spec, "seed": seed, "n_examples": len(data), "shards": [s.tolist() for s in shards]}
        )
    return [len(s) for s in read_partition(run_dir)]


def read_partition(run_dir: Path) -> list[np.ndarray]:
    doc = json.loads((run_dir / PARTITION_FILE).read_text())
    return [np.asarray(s, dtype=np.int64) for s in doc["shards"]]


def public_data_file(run_dir: Path, public_data: str, label_names, classes: list[int] | None) -> Path:
    """The cloud's public data: the file itself, or (shifted public data) a copy holding only ``classes``."""
    if not classes:
        return Path(public_data)
    path = run_dir / PUBLIC_FILE
    if not path.is_file():
        data = public_split(load_dataset(public_data, label_names=label_names), classes=classes)
        rows = (f"{' '.join(t.split())}\t{int(y)}\n" for t, y in zip(data.texts, data.labels, strict=True))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")  # read back as QUOTE_NONE TSV
        tmp.replace(path)
        log.info("shifted public data: %d examples of classes %s in %s", len(data), classes, path)
    return path


def device_name(device: int) -> str:
    """The name simulated device ``device`` enrols under."""
    return f"sim-{device:03d}"


def select_devices(seed: int, round_: int, clients: int, per_round: int) -> list[int]:
    """The K devices of a round: a seeded draw without replacement, the same after any restart."""
    rng = np.random.default_rng([seed, round_])
    return sorted(int(d) for d in rng.choice(clients, size=per_round, replace=False))
