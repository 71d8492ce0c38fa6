"""θ on disk as safetensors (never pickle): written atomically, read back with shape and finiteness checks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, load_file, save_file

from cooperllm.layout import ParamLayout

if TYPE_CHECKING:
    from cooperllm.manifest import Manifest


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see the old or the new file, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_theta(path: str | os.PathLike, theta: np.ndarray, layout: ParamLayout, metadata: dict | None = None) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        tensors = {n: np.ascontiguousarray(v) for n, v in layout.unflatten(theta).items()}
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_theta(path: str | os.PathLike, layout: ParamLayout) -> np.ndarray:
    """θ from a safetensors file holding exactly the layout's tensors; a clear error otherwise."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    return _theta_from_tensors(tensors, layout, str(path))


def initial_theta(folder: str | os.PathLike, manifest: Manifest) -> np.ndarray:
    """θ₀ shipped in an artifact folder (the exporter's adapter at its start): what a device, the cloud and the
    benchmarks all begin from, read one way."""
    return load_theta(Path(folder) / manifest.initial_adapter_file, manifest.layout)


def load_theta_bytes(data: bytes, layout: ParamLayout, what: str = "adapter") -> np.ndarray:
    """θ from safetensors bytes (e.g. a downloaded adapter), with the same checks as :func:`load_theta`."""
    try:
        tensors = load(bytes(data))
    except SafetensorError as exc:
        raise ValueError(f"{what}: not a readable safetensors file ({exc})") from exc
    return _theta_from_tensors(tensors, layout, what)


def _theta_from_tensors(tensors: dict[str, np.ndarray], layout: ParamLayout, path: str) -> np.ndarray:
    extra = set(tensors) - set(layout.names)
    if extra:
        raise ValueError(f"{path}: tensors not in the adapter layout: {sorted(extra)[:5]}")
    try:
        theta = layout.flatten(tensors)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not np.isfinite(theta).all():
        raise ValueError(f"{path}: adapter contains NaN or Inf")
    return theta
