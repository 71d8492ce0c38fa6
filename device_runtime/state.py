"""Device state on disk: θ, step counters, round id and pending (computed, not yet acknowledged) reports.

Everything lives in one safetensors file (θ as tensors, the rest as JSON in its metadata) replaced atomically, so a
process killed at any instant leaves either the previous state or the new one, never a mix. A computed report is
saved here *before* any upload is attempted: a crash or a dead network can delay it, never lose it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from cooperllm.checkpoint import save_theta
from cooperllm.layout import ParamLayout
from cooperllm.zgr import Report

log = logging.getLogger(__name__)

STATE_FILE = "device_state.safetensors"
STATE_VERSION = 1
_ROUND_BASE_PREFIX = "round_base::"  # θ at the start of the round (replay base), stored beside θ


class StateError(ValueError):
    """A state file that cannot be trusted (corrupt, other artifact, other config); the message says which."""


@dataclass
class DeviceState:
    theta: np.ndarray
    step: int = 0  # local steps done (standalone) or steps done in the current round (client)
    round_id: int = -1  # last round joined; −1 before the first
    pending: list[Report] = field(default_factory=list)  # computed, not yet acknowledged by the cloud
    artifact: str = ""  # sha256 of the graph the state was computed with
    fingerprint: str = ""  # what must match to resume (config, data), as the caller defines it
    extra: dict = field(default_factory=dict)  # small JSON-able counters (device id, history, ...)
    round_base: np.ndarray | None = None  # θ at the start of the current round, for replay

    def to_metadata(self) -> dict[str, str]:
        doc = {
            "version": STATE_VERSION,
            "step": self.step,
            "round_id": self.round_id,
            "pending": [_report_to_dict(r) for r in self.pending],
            "artifact": self.artifact,
            "fingerprint": self.fingerprint,
            "extra": self.extra,
            "has_round_base": self.round_base is not None,
        }
        return {"cooperllm_device_state": json.dumps(doc)}


def _report_to_dict(r: Report) -> dict:
    return {"seed": r.seed, "block": r.block, "step": r.step, "scalar": r.scalar, "n_examples": r.n_examples}


def _report_from_dict(d: dict) -> Report:
    return Report(int(d["seed"]), int(d["block"]), int(d["step"]), float(d["scalar"]), int(d["n_examples"]))


def _base_layout(layout: ParamLayout) -> ParamLayout:
    return ParamLayout.build((_ROUND_BASE_PREFIX + t.name, t.shape, "base") for t in layout.tensors)


def save_state(folder: str | os.PathLike, state: DeviceState, layout: ParamLayout) -> Path:
    """Atomically replace ``folder/device_state.safetensors`` (temp file, fsync, rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    if state.round_base is None:
        save_theta(path, state.theta, layout, state.to_metadata())
    else:
        both = ParamLayout.build(
            [(t.name, t.shape, "theta") for t in layout.tensors]
            + [(_ROUND_BASE_PREFIX + t.name, t.shape, "base") for t in layout.tensors]
        )
        save_theta(path, np.concatenate([state.theta, state.round_base]), both, state.to_metadata())
    return path


def load_state(folder: str | os.PathLike, layout: ParamLayout) -> DeviceState | None:
    """The saved state, or None when there is none; a corrupt or mismatching file raises StateError."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            tensors = {n: f.get_tensor(n) for n in names}
        doc = json.loads(meta["cooperllm_device_state"])
        if int(doc["version"]) != STATE_VERSION:
            raise StateError(f"{path}: state version {doc['version']} is not supported")
        theta = layout.flatten({n: tensors[n] for n in layout.names})
        base = None
        if doc.get("has_round_base"):
            base = _base_layout(layout).flatten(
                {_ROUND_BASE_PREFIX + n: tensors[_ROUND_BASE_PREFIX + n] for n in layout.names}
            )
        state = DeviceState(
            theta=theta,
            step=int(doc["step"]),
            round_id=int(doc["round_id"]),
            pending=[_report_from_dict(d) for d in doc["pending"]],
            artifact=str(doc["artifact"]),
            fingerprint=str(doc["fingerprint"]),
            extra=dict(doc.get("extra", {})),
            round_base=base,
        )
    except StateError:
        raise
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: unreadable device state ({exc!r}); move it away to start over") from exc
    if not np.isfinite(state.theta).all():
        raise StateError(f"{path}: θ contains NaN or Inf")
    return state
