"""ctypes binding of the native ExecuTorch runner (``runner.cpp``): load a ``.pte``, run it on numpy buffers.

Torch-free by construction: the process loads only libcooperllm_et.so and the executorch wheel's runtime libraries.
Buffers are checked (dtype, shape, contiguity) here and again (byte counts) in C before anything is read.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cooperllm.console import without_cpu_probe_lines
from device_runtime.native.build import NativeBuildError, build

log = logging.getLogger(__name__)

ABI_VERSION = 1
_DTYPES = {1: np.dtype(np.int64), 2: np.dtype(np.float32)}
_ERR_LEN = 2048
_MAX_DIMS = 16

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class NativeRunnerError(RuntimeError):
    """The native runner could not be built, loaded or run; the message carries the C side's reason."""


def library_path() -> Path:
    """Path of the host library, building it (once, cached by source hash) when needed."""
    override = os.environ.get("COOPERLLM_NATIVE_LIB")
    if override:
        return Path(override)
    try:
        return build().library
    except NativeBuildError as exc:
        raise NativeRunnerError(str(exc)) from exc


def load_library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path = library_path()
        try:
            lib = ctypes.CDLL(os.fspath(path))
        except OSError as exc:
            raise NativeRunnerError(f"cannot load the native runner {path}: {exc}") from exc
        _declare(lib)
        if lib.cl_abi_version() != ABI_VERSION:
            raise NativeRunnerError(f"{path} has ABI {lib.cl_abi_version()}, this binding expects {ABI_VERSION}")
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    c_err = (ctypes.c_char_p, ctypes.c_size_t)
    lib.cl_abi_version.restype = ctypes.c_int
    lib.cl_set_threads.argtypes = (ctypes.c_int, *c_err)
    lib.cl_get_threads.restype = ctypes.c_int
    lib.cl_runner_load.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), *c_err)
    lib.cl_runner_num_inputs.argtypes = (ctypes.c_void_p,)
    lib.cl_runner_input_info.argtypes = (
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int,
    )
    lib.cl_runner_run.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.c_int,
        *c_err,
    )
    lib.cl_runner_run_shaped.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int,
        *c_err,
    )
    lib.cl_runner_num_outputs.argtypes = (ctypes.c_void_p,)
    lib.cl_runner_output_f32.argtypes = (
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_int64),
        *c_err,
    )
    lib.cl_runner_free.argtypes = (ctypes.c_void_p,)
    lib.cl_runner_free.restype = None


def set_threads(n: int) -> None:
    """Size ExecuTorch's process-wide thread pool (XNNPACK and the optimized kernels share it)."""
    lib = load_library()
    err = ctypes.create_string_buffer(_ERR_LEN)
    if lib.cl_set_threads(int(n), err, _ERR_LEN) != 0:
        raise NativeRunnerError(err.value.decode(errors="replace"))


class NativeRunner:
    """One loaded program; ``run(inputs) -> (loss, label_logits)``. Not thread-safe (one method, planned memory)."""

    def __init__(self, path: str | os.PathLike, mmap: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise NativeRunnerError(f"no such .pte file: {self.path}")
        self._lib = load_library()
        err = ctypes.create_string_buffer(_ERR_LEN)
        handle = ctypes.c_void_p()
        with without_cpu_probe_lines():
            status = self._lib.cl_runner_load(os.fsencode(self.path), int(mmap), ctypes.byref(handle), err, _ERR_LEN)
        if status != 0:
            raise NativeRunnerError(err.value.decode(errors="replace"))
        self._handle = handle
        self.input_specs: list[tuple[np.dtype, tuple[int, ...]]] = []
        for i in range(self._lib.cl_runner_num_inputs(handle)):
            dtype, ndim, sizes = ctypes.c_int(), ctypes.c_int(), (ctypes.c_int64 * _MAX_DIMS)()
            self._lib.cl_runner_input_info(handle, i, ctypes.byref(dtype), ctypes.byref(ndim), sizes, _MAX_DIMS)
            if dtype.value not in _DTYPES:
                self.close()
                raise NativeRunnerError(f"{self.path.name}: input {i} has an unsupported dtype (code {dtype.value})")
            self.input_specs.append((_DTYPES[dtype.value], tuple(sizes[k] for k in range(ndim.value))))
        self._err = ctypes.create_string_buffer(_ERR_LEN)

    def __call__(self, inputs: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        return self.run(inputs)

    def run(self, inputs: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        """(loss, label_logits (B, C)) of a plain loss graph."""
        outs = self.run_all(inputs)
        if len(outs) < 2:
            raise NativeRunnerError(f"{self.path.name} returned {len(outs)} outputs, expected loss and label_logits")
        loss, logits = outs[0], outs[1]
        if loss.size != 1:
            raise NativeRunnerError(f"{self.path.name}: loss has {loss.size} elements (a paired graph? use run_all)")
        batch = self.input_specs[0][1][0] if self.input_specs and self.input_specs[0][1] else 1
        return float(loss[0]), logits.reshape(batch, -1)

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every output of one call, flattened float32."""
        if self._handle is None:
            raise NativeRunnerError("runner is closed")
        n = len(self.input_specs)
        if len(inputs) != n:
            raise NativeRunnerError(f"{self.path.name} takes {n} inputs, got {len(inputs)}")
        arrays = []
        for i, (a, (dtype, shape)) in enumerate(zip(inputs, self.input_specs, strict=True)):
            a = np.asarray(a)
            # a size below the planned one is for a program with a dynamic dimension (length buckets); the runtime
            # refuses it on a static program, with its own message
            if (
                a.dtype != dtype
                or a.ndim != len(shape)
                or any(got > most for got, most in zip(a.shape, shape, strict=True))
            ):
                raise NativeRunnerError(f"input {i} must be {dtype} {shape} (or smaller), got {a.dtype} {a.shape}")
            arrays.append(np.ascontiguousarray(a))  # kept alive until the call returns
        ptrs = (ctypes.c_void_p * n)(*(a.ctypes.data for a in arrays))
        nbytes = (ctypes.c_uint64 * n)(*(a.nbytes for a in arrays))
        dims = [d for a in arrays for d in a.shape]
        sizes = (ctypes.c_int64 * max(len(dims), 1))(*dims)
        if self._lib.cl_runner_run_shaped(self._handle, ptrs, nbytes, sizes, n, self._err, _ERR_LEN) != 0:
            raise NativeRunnerError(f"{self.path.name}: {self._err.value.decode(errors='replace')}")
        return [self._output(k) for k in range(self._lib.cl_runner_num_outputs(self._handle))]

    def _output(self, index: int) -> np.ndarray:
        numel = ctypes.c_int64()
        for attempt in ("size", "copy"):
            buf = np.empty(numel.value, dtype=np.float32) if attempt == "copy" else None
            dst = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if buf is not None else None
            cap = numel.value if buf is not None else 0
            if self._lib.cl_runner_output_f32(self._handle, index, dst, cap, ctypes.byref(numel), self._err, _ERR_LEN):
                raise NativeRunnerError(f"{self.path.name}: {self._err.value.decode(errors='replace')}")
        return buf

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._lib.cl_runner_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()
