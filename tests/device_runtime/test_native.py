"""Native (torch-free) ExecuTorch runner: parity with ExecuTorch's Python runtime, clear errors, no torch loaded.

The runner is compiled once per source hash (cached under device_runtime/native/build/), so only the first run on a
machine pays the few seconds of g++.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cooperllm.adapter import AdapterSpec
from cooperllm.models import TOKENIZER_FILE, load_causal_lm
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder
from device_runtime.native.binding import NativeRunner, NativeRunnerError
from device_runtime.native.build import NativeBuildError, build
from device_runtime.session import open_session
from exporters.runners import PteRunner

BATCH, SEQ = 4, 16
COMBOS = (("xnnpack", "none"), ("portable", "none"), ("xnnpack", "int8"), ("portable", "int8"))
EXPORTED_HERE = tuple(c for c in COMBOS if c != ("xnnpack", "int8"))  # that one is the shared tiny_artifacts graph


def export_tiny_ptes(model_dir: Path, out: Path, combos=EXPORTED_HERE) -> dict[tuple[str, str], Path]:
    """One traced program per quantization, lowered to each requested ExecuTorch backend (cheaper than full exports)."""
    import torch

    from cooperllm.modeling import build_task_model
    from exporters.graph import ThetaInputs, example_inputs, export_program
    from exporters.lower import to_pte
    from exporters.quantize import quantize_frozen

    task = TaskSpec()
    encoder = PromptEncoder(model_dir / TOKENIZER_FILE, task, SEQ)
    paths = {}
    # one quantized module per weight format: plain-op int8/fp32, or int8 kept whole for XNNPACK f32-qc8w
    groups = dict.fromkeys((q, b == "xnnpack-qc8w") for b, q in combos)
    for quant, qc8w in groups:
        lm = load_causal_lm(model_dir)
        module, layout = build_task_model(lm, encoder, AdapterSpec())
        if qc8w:
            from exporters.int8_xnnpack import quantize_qc8w

            quantize_qc8w(module, skip=(lm.get_output_embeddings(),))
        else:
            quantize_frozen(module, quant, skip=(lm.get_output_embeddings(),))
        theta = {n: p.detach() for n, p in module.named_parameters() if n in layout.names}
        for backend in (b for b, q in combos if q == quant and (b == "xnnpack-qc8w") == qc8w):
            args = example_inputs(layout, theta, BATCH, SEQ, lm.config.vocab_size, task.num_classes)
            with torch.no_grad():
                program = export_program(ThetaInputs(module, layout.names), args)
            path = out / f"tiny-{backend}-{quant}.pte"
            to_pte(program, backend, path, dynamic_weights=quant != "none")  # as exporters.api lowers it
            paths[(backend, quant)] = path
    return paths


def random_inputs(specs, seed: int = 0, theta_scale: float = 0.05) -> list[np.ndarray]:
    """Inputs matching a runner's (dtype, shape) specs: ids, a left-padded mask, labels, then random θ tensors."""
    rng = np.random.default_rng(seed)
    (_, ids_shape), _, (_, labels_shape) = specs[:3]
    ids = rng.integers(1, 500, ids_shape).astype(np.int64)
    mask = np.ones(ids_shape, dtype=np.int64)
    mask[0, : ids_shape[1] // 3] = 0
    labels = (np.arange(labels_shape[0]) % 2).astype(np.int64)
    theta = [(rng.standard_normal(shape) * theta_scale).astype(np.float32) for _, shape in specs[3:]]
    return [ids, mask, labels, *theta]


@pytest.fixture(scope="session")
def tiny_ptes(tiny_model_dir, tiny_artifacts, tmp_path_factory) -> dict[tuple[str, str], Path]:
    build()  # compile (or reuse) before any export, so a toolchain problem fails first and clearly
    paths = export_tiny_ptes(tiny_model_dir, tmp_path_factory.mktemp("tiny-ptes"))
    paths[("xnnpack", "int8")] = tiny_artifacts / "model.pte"
    return paths


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c))
def test_native_matches_the_python_runtime(tiny_ptes, combo):
    path = tiny_ptes[combo]
    native = NativeRunner(path)
    python = PteRunner(path)
    for seed in (0, 1):
        inputs = random_inputs(native.input_specs, seed)
        loss, logits = native(inputs)
        ref_loss, ref_logits = python(inputs)
        assert logits.shape == (native.input_specs[0][1][0], 2)
        assert np.isfinite(loss) and loss > 0
        assert abs(loss - ref_loss) <= 1e-6, (combo, loss, ref_loss)
        assert np.abs(logits - ref_logits).max() <= 1e-5
    # the same runner, run again at a perturbed θ, gives a different loss (inputs are really read every call)
    inputs = random_inputs(native.input_specs, 0)
    inputs[4] = inputs[4] + np.float32(0.5)
    assert abs(native(inputs)[0] - native(random_inputs(native.input_specs, 0))[0]) > 1e-6


def test_fp32_and_int8_graphs_agree_closely(tiny_ptes):
    """Weight-only int8 is a small perturbation of the fp32 function (same θ, same batch)."""
    fp32 = NativeRunner(tiny_ptes[("xnnpack", "none")])
    int8 = NativeRunner(tiny_ptes[("portable", "int8")])
    inputs = random_inputs(fp32.input_specs, 3)
    assert abs(fp32(inputs)[0] - int8(inputs)[0]) < 1e-2


def test_bad_inputs_are_clear_errors(tiny_ptes):
    runner = NativeRunner(tiny_ptes[("portable", "none")])
    inputs = random_inputs(runner.input_specs)
    with pytest.raises(NativeRunnerError, match="takes .* inputs, got"):
        runner(inputs[:-1])
    bad = list(inputs)
    bad[0] = bad[0].astype(np.int32)
    with pytest.raises(NativeRunnerError, match="input 0 must be int64"):
        runner(bad)
    bad = list(inputs)
    bad[3] = np.concatenate([bad[3], bad[3]])
    with pytest.raises(NativeRunnerError, match="input 3 must be float32"):
        runner(bad)
    bad[3] = inputs[3][:1]  # smaller than planned: only a program with a dynamic dimension takes it
    with pytest.raises(NativeRunnerError, match="set_input 3 failed"):
        runner(bad)
    runner.close()
    with pytest.raises(NativeRunnerError, match="closed"):
        runner(inputs)


def test_unreadable_programs_are_refused(tiny_ptes, tmp_path):
    with pytest.raises(NativeRunnerError, match="no such .pte"):
        NativeRunner(tmp_path / "missing.pte")
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(NativeRunnerError, match="cannot load program"):
        NativeRunner(junk)
    truncated = tmp_path / "truncated.pte"
    data = tiny_ptes[("xnnpack", "none")].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(NativeRunnerError, match="cannot load"):
        NativeRunner(truncated)


def test_executorchs_log_stays_off_the_terminal_and_its_errors_join_the_message(tiny_ptes, tmp_path):
    """ExecuTorch prints info lines (thread pool resets, CPU probing) to stderr by default; the runner's log handler
    drops them and keeps the error lines for the failure they explain."""
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"not a flatbuffer at all" * 10)
    code = (
        "import sys\n"
        "from device_runtime.native.binding import NativeRunner, NativeRunnerError, set_threads\n"
        "set_threads(2); set_threads(1)\n"
        f"NativeRunner({str(tiny_ptes[('xnnpack', 'int8')])!r})\n"
        "try:\n"
        f"    NativeRunner({str(junk)!r})\n"
        "except NativeRunnerError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # the native runner's output: nothing ExecuTorch logs reaches the terminal
    assert "cannot load program" in out.stdout and "[executorch: " in out.stdout, out.stdout


def test_missing_toolchain_or_wheel_is_a_clear_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(NativeBuildError, match="not found: apt-get install -y g\\+\\+"):
        build(force=True)
    monkeypatch.delenv("CXX")
    with pytest.raises(NativeBuildError, match="no ExecuTorch headers"):
        build(et_root=tmp_path)


def test_standalone_executable_prints_the_same_loss(tiny_ptes, tmp_path):
    """The Python-free driver (what runs under qemu for the ARM check) reads raw inputs and agrees with ctypes."""
    path = tiny_ptes[("xnnpack", "int8")]
    runner = NativeRunner(path)
    inputs = random_inputs(runner.input_specs, 2)
    blob = tmp_path / "inputs.bin"
    blob.write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in inputs))
    out = subprocess.run([build().executable, path, blob, "--repeat", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    loss, logits = runner(inputs)
    assert abs(result["loss"] - loss) <= 1e-6
    assert np.allclose(result["logits"], logits.ravel(), atol=1e-6)
    assert len(result["forward_ms"]) == 2 and result["peak_rss_mb"] > 0
    blob.write_bytes(blob.read_bytes()[:-4])
    bad = subprocess.run([build().executable, path, blob], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must hold exactly" in bad.stderr


def test_device_session_defaults_to_native_without_torch(tiny_artifacts):
    """open_session on a .pte artifact picks the native runner and never imports torch in the device process."""
    code = (
        "import sys, json, numpy as np\n"
        "from device_runtime.session import open_session\n"
        f"s = open_session({str(tiny_artifacts)!r})\n"
        "b = s.encoder.encode(['a good film'] * 8, np.arange(8) % 2)\n"
        "loss, logits = s.backend.run(b, s.backend.initial_theta())\n"
        "print(json.dumps({'backend': s.backend.name, 'loss': loss, 'torch': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "native"
    assert result["torch"] is False
    assert np.isfinite(result["loss"])


def test_native_backend_matches_python_executorch_backend(tiny_artifacts, toy_dataset):
    native = open_session(tiny_artifacts, "native")
    python = open_session(tiny_artifacts, "executorch")
    batch = native.encoder.encode(toy_dataset.texts, toy_dataset.labels)
    theta = native.backend.initial_theta()
    theta[::3] += np.float32(0.05)
    a, b = native.backend.run(batch, theta), python.backend.run(batch, theta)
    assert a[0] == pytest.approx(b[0], abs=1e-6)
    assert np.abs(a[1] - b[1]).max() <= 1e-5
