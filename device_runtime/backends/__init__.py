"""Open an artifact folder by its manifest (hashes verified: a mismatch refuses to load) on the chosen backend.

Backend modules are imported only when chosen, so the ONNX Runtime path never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cooperllm.manifest import Manifest, ManifestError, read_manifest
from device_runtime.backends.base import BackendError, GraphBackend
from device_runtime.backends.eager_backend import EagerBackend
from device_runtime.backends.executorch_backend import ExecuTorchBackend
from device_runtime.backends.native_backend import NativeBackend
from device_runtime.backends.onnx_backend import OnnxBackend

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "native", "executorch", "eager")
_FORMAT_OF = {"onnx": "onnx", "native": "pte", "executorch": "pte"}

__all__ = ["BACKENDS", "BackendError", "GraphBackend", "ManifestError", "choose_backend", "open_backend"]


def choose_backend(manifest: Manifest, backend: str | None) -> str:
    """``backend`` if given (and present in the manifest), else the manifest's first graph's format."""
    if backend is None:
        fmt = manifest.graphs[0].format
        return "onnx" if fmt == "onnx" else "native"  # .pte: the torch-free native runner (not the Python runtime)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "eager":
        manifest.graph(_FORMAT_OF[backend])  # raises ManifestError naming the graphs that exist
    return backend


def open_backend(
    folder: str | Path,
    backend: str | None = None,
    *,
    model_dir: str | Path | None = None,
    manifest: Manifest | None = None,
    threads: int | None = None,
) -> GraphBackend:
    """Load the graph of ``folder``; ``manifest`` may be passed when it was already read (and verified)."""
    folder = Path(folder)
    if manifest is None:
        manifest = read_manifest(folder, verify_hashes=True)
    name = choose_backend(manifest, backend)
    log.info("loading %s graph from %s", name, folder)
    if name == "onnx":
        return OnnxBackend(manifest, folder, manifest.graph("onnx"), threads=threads)
    if name == "native":
        return NativeBackend(manifest, folder, manifest.graph("pte"), threads=threads)
    if name == "executorch":
        return ExecuTorchBackend(manifest, folder, manifest.graph("pte"))

    ref = manifest.graphs[0]
    return EagerBackend(manifest, folder, model_dir or manifest.model_name, ref.batch_size, ref.seq_len)
