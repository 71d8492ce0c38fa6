"""Device commands in real processes: torch-free ONNX path, kill-and-resume == uninterrupted, memory budget."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cooperllm.manifest import read_manifest
from device_runtime.engine import ZOConfig
from device_runtime.state import STATE_FILE, load_state
from device_runtime.train import TrainConfig

TORCH_FREE_MODULES = [
    "device_runtime",
    "device_runtime.backends",
    "device_runtime.backends.onnx_backend",
    "device_runtime.engine",
    "device_runtime.state",
    "device_runtime.batches",
    "device_runtime.train",
    "device_runtime.session",
    "device_runtime.budget",
    "device_runtime.transfer",
    "device_runtime.outbox",
    "device_runtime.uploader",
    "device_runtime.prefetch",
    "device_runtime.errors",
    "device_runtime.theta_sync",
    "device_runtime.client",
    "device_runtime.client_cli",
    "device_runtime.cli",
    "cooperllm_app.bench.memory",
]


def _device(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "device_runtime", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _train_args(art, data, steps, state=None, *extra):
    args = [
        "train",
        "--artifacts",
        str(art),
        "--backend",
        "onnx",
        "--data",
        str(data),
        "--steps",
        str(steps),
        "--lr",
        "0.05",
        "--no-progress",
        "--json",
        *extra,
    ]
    return [*args, "--state", str(state)] if state else args


def test_onnx_path_imports_neither_torch_nor_transformers(tiny_artifacts, toy_tsv):
    code = (
        "import sys, importlib\n"
        f"for m in {TORCH_FREE_MODULES!r}: importlib.import_module(m)\n"
        "from device_runtime.session import open_session\n"
        "from device_runtime.engine import ZOEngine, ZOConfig\n"
        f"s = open_session({str(tiny_artifacts)!r}, 'onnx')\n"
        "b = s.encoder.encode(['a good film'] * 8, [1] * 8)\n"
        "e = ZOEngine(s.backend.initial_theta(), s.manifest.layout, s.backend.run, ZOConfig())\n"
        "e.update(e.step(b, 0))\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_killed_training_resumes_to_the_uninterrupted_result(tiny_artifacts, toy_tsv, tmp_path):
    steps = 300  # enough that a kill right after the first saved state lands mid-run even on a fast machine
    decay = ("--lr-half-life", "100")  # the rate depends on the step index: a resume must pick it up where it was
    straight = _device(*_train_args(tiny_artifacts, toy_tsv, steps, tmp_path / "a", *decay))
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads(straight.stdout.splitlines()[-1])
    assert expected["torch_loaded"] is False and expected["steps"] == steps

    # Kill a second run (SIGKILL: no cleanup) once it has saved some state, then resume it.
    state = tmp_path / "b"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "device_runtime",
        "--log-level",
        "WARNING",
        *_train_args(tiny_artifacts, toy_tsv, steps, state, "--save-every", "1", *decay),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (state / STATE_FILE).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    killed_at = load_state(state, read_manifest(tiny_artifacts).layout).step
    assert 0 < killed_at < steps, f"the kill landed at step {killed_at}; the test needs a mid-run kill"

    resumed = _device(*_train_args(tiny_artifacts, toy_tsv, steps, state, *decay))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads(resumed.stdout.splitlines()[-1])
    assert got["resumed_from"] == killed_at
    assert got["theta_sha256"] == expected["theta_sha256"]


def test_state_from_other_settings_is_refused(tiny_artifacts, toy_tsv, tmp_path):
    first = _device(*_train_args(tiny_artifacts, toy_tsv, 2, tmp_path / "s"))
    assert first.returncode == 0, first.stderr[-2000:]
    for changed in (("--eps", "0.01"), ("--lr-half-life", "10")):
        other = _device(*_train_args(tiny_artifacts, toy_tsv, 4, tmp_path / "s", *changed))
        assert other.returncode == 2
        assert "other settings" in other.stderr


def test_train_reports_the_flips_behind_its_accuracy_change(tiny_artifacts, toy_tsv):
    out = _device(*_train_args(tiny_artifacts, toy_tsv, 40, None, "--eval", str(toy_tsv)))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.splitlines()[-1])
    first, last = summary["evals"][0], summary["evals"][-1]
    change = summary["vs_first_eval"]
    assert (first["step"], last["step"], change["step"]) == (0, 40, 0)
    assert change["gained"] - change["lost"] == round((last["accuracy"] - first["accuracy"]) * last["n"])
    assert 0.0 < change["p_value"] <= 1.0


def test_lr_half_life_halves_the_rate_independently_of_the_budget():
    decayed = TrainConfig(steps=10, zo=ZOConfig(lr=1e-3), lr_half_life=4)
    assert decayed.lr_at(0) == 1e-3 and decayed.lr_at(4) == 5e-4 and abs(decayed.lr_at(2) - 1e-3 / 2**0.5) < 1e-15
    assert TrainConfig(steps=1000, zo=ZOConfig(lr=1e-3), lr_half_life=4).lr_at(4) == 5e-4
    assert TrainConfig(steps=10, zo=ZOConfig(lr=1e-3)).lr_at(9) == 1e-3
    with pytest.raises(ValueError, match="lr_half_life must be >= 0"):
        TrainConfig(steps=10, lr_half_life=-1)


@pytest.mark.parametrize("budget", ["60", "200"])
def test_memory_budget_too_small_fails_fast_with_need_and_budget(tiny_artifacts, toy_tsv, budget):
    t0 = time.monotonic()
    out = _device(*_train_args(tiny_artifacts, toy_tsv, 1000), "--memory-budget", budget)
    assert out.returncode == 3, out.stderr[-2000:]
    assert f"memory budget of {budget} MB" in out.stderr or f"the memory budget is {budget} MB" in out.stderr
    assert "needs at least" in out.stderr or "does not fit" in out.stderr
    assert time.monotonic() - t0 < 60  # before any of the 1000 steps


def test_memory_budget_that_fits_trains(tiny_artifacts, toy_tsv):
    out = _device(*_train_args(tiny_artifacts, toy_tsv, 3), "--memory-budget", "600")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["steps"] == 3 and summary["peak_rss_mb"] < 600


_HEAP_PROBE = """
import ctypes, ctypes.util, sys
from device_runtime.budget import tame_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tame":
    assert tame_heap() and tame_heap()  # idempotent
libc.free(libc.malloc(4 << 20))  # freeing a big mmapped block raises glibc's dynamic mmap threshold to its size
before = libc.mallinfo2().hblks
block = libc.malloc(256 << 10)  # a guidance basis' worth
print(libc.mallinfo2().hblks - before)  # 1: the block is mmapped (unmapped when freed); 0: it sits on a heap
libc.free(block)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc behaviour")
def test_the_device_heap_keeps_block_sized_buffers_off_the_fragmenting_heap():
    """A device process that runs round after round frees and reallocates per-block buffers from several threads;
    glibc's dynamic mmap threshold would move them onto per-thread heaps that never shrink (measured: ~20 MB a round
    for a SmolLM2 zgr device). ``open_session`` fixes the threshold first: such buffers stay mmapped."""
    out = {}
    for mode in ("default", "tame"):
        proc = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out[mode] = int(proc.stdout.strip())
    assert out == {"default": 0, "tame": 1}
