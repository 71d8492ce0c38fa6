"""Graph backends on a tiny exported int8 model: agreement with eager, ZO descent, same trajectory, hash refusal."""

import shutil

import numpy as np
import pytest

from cooperllm.manifest import ManifestError, read_manifest
from device_runtime.backends import choose_backend
from device_runtime.backends.base import BackendError
from device_runtime.engine import ZOConfig
from device_runtime.session import open_session
from device_runtime.train import TrainConfig, train


@pytest.fixture(scope="module")
def sessions(tiny_artifacts):
    return {name: open_session(tiny_artifacts, name) for name in ("onnx", "executorch")}


def test_backends_match_the_eager_reference(sessions, tiny_artifacts, tiny_model_dir, toy_dataset):
    eager = open_session(tiny_artifacts, "eager", model_dir=str(tiny_model_dir))
    batch = eager.encoder.encode(toy_dataset.texts, toy_dataset.labels)
    theta = eager.backend.initial_theta()
    theta[: theta.size // 2] += np.float32(0.05)  # away from θ₀ (B = 0) so the adapters matter
    ref_loss, ref_logits = eager.backend.run(batch, theta)
    for name, s in sessions.items():
        loss, logits = s.backend.run(batch, theta)
        assert logits.shape == (8, 2)
        assert loss == pytest.approx(ref_loss, abs=2e-2), name  # int8 weights vs the fp32 eager model
        assert np.abs(logits - ref_logits).max() < 5e-2, name
    onnx_loss, onnx_logits = sessions["onnx"].backend.run(batch, theta)
    et_loss, et_logits = sessions["executorch"].backend.run(batch, theta)
    assert onnx_loss == pytest.approx(et_loss, abs=1e-4)  # the same int8 graph on two runtimes


def test_zo_lowers_loss_on_both_backends_along_the_same_trajectory(sessions, toy_corpus):
    cfg = TrainConfig(steps=60, zo=ZOConfig(lr=5e-2, eps=1e-3, seed=0), data_seed=0)
    results = {
        name: train(s.backend, toy_corpus, cfg, eval_data=toy_corpus, progress=False) for name, s in sessions.items()
    }
    for name, r in results.items():
        (s0, before), (s1, after) = r.evals[0], r.evals[-1]
        assert (s0, s1) == (0, 60)
        assert after.loss < before.loss - 0.1, f"{name}: {before.loss:.4f} -> {after.loss:.4f}"
        assert r.skipped == 0
        change = r.change()  # the flips add up to the accuracy change, example by example
        assert change.gained - change.lost == round((after.accuracy - before.accuracy) * after.n_examples)
        assert 0.0 < change.p_value <= 1.0
    onnx_losses = np.array([loss for _, loss in results["onnx"].losses])
    et_losses = np.array([loss for _, loss in results["executorch"].losses])
    assert np.abs(onnx_losses - et_losses).max() < 1e-2
    assert np.abs(results["onnx"].theta - results["executorch"].theta).max() < 5e-3


def test_tampered_artifact_is_refused(tiny_artifacts, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifacts, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(-16, 2)
        byte = f.read(1)
        f.seek(-16, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match="sha256"):
        open_session(copy, "onnx")


def test_wrong_batch_shape_and_theta_are_rejected(sessions, toy_dataset):
    s = sessions["onnx"]
    small = s.encoder.encode(toy_dataset.texts[:3], toy_dataset.labels[:3])
    theta = s.backend.initial_theta()
    with pytest.raises(BackendError, match="batches of 8"):
        s.backend.run(small, theta)
    full = s.encoder.encode(toy_dataset.texts, toy_dataset.labels)
    with pytest.raises(BackendError, match="float32"):
        s.backend.run(full, theta.astype(np.float64))


def test_backend_choice_follows_the_manifest(tiny_artifacts, tmp_path):
    manifest = read_manifest(tiny_artifacts)
    assert choose_backend(manifest, None) == "native"  # first graph is .pte: the torch-free runner
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend(manifest, "tflite")
