"""``cooperllm adapter export`` of a seq-cls θ: the PEFT folder loads with peft.PeftModel.from_pretrained, and with the
written head it reproduces the task module's logits (the head's centre folded into its bias)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cooperllm.checkpoint import initial_theta, save_theta
from cooperllm.manifest import read_manifest
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder

TEXTS = ["a charming and often affecting journey", "bleak and desperate", "fine", "the worst of the year"]


def _adapter_export(artifacts, adapter, out) -> subprocess.CompletedProcess:
    argv = ["adapter", "export", "--artifacts", str(artifacts), "--adapter", str(adapter), "--out", str(out)]
    return subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", *argv], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def seq_cls_artifacts(export_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-seq-cls")
    task = TaskSpec(mode="seq-cls", label_words=(), label_names=("neg", "neutral", "pos"))
    export_tiny(out, task=task, formats=("pte",), quant="int8", batch_size=4, seq_len=24, validate=False)
    return out


def test_the_peft_folder_and_head_reproduce_the_task_logits(seq_cls_artifacts, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from cooperllm.modeling import build_task_model, forward_at
    from cooperllm.models import load_causal_lm

    manifest = read_manifest(seq_cls_artifacts)
    rng = np.random.default_rng(0)
    theta = initial_theta(seq_cls_artifacts, manifest)
    theta = (theta + rng.normal(0, 0.05, theta.shape)).astype(np.float32)  # LoRA B and the head both non-zero
    adapter = tmp_path / "theta.safetensors"
    save_theta(adapter, theta, manifest.layout)
    out = tmp_path / "peft"
    proc = _adapter_export(seq_cls_artifacts, adapter, out)
    assert proc.returncode == 0, proc.stderr
    task_doc = json.loads((out / "cooperllm_task.json").read_text())
    assert task_doc["task"]["label_names"] == ["neg", "neutral", "pos"] and task_doc["padding"] == "left"

    encoder = PromptEncoder(tiny_model_dir / "tokenizer.json", manifest.task, 24)
    batch = encoder.encode(TEXTS, np.zeros(len(TEXTS), dtype=np.int64))
    module, layout = build_task_model(load_causal_lm(tiny_model_dir), encoder, manifest.adapter)
    _, expected = forward_at(module, layout, batch, theta)

    base = AutoModelForCausalLM.from_pretrained(task_doc["base_model"], dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, out).eval()
    head = load_file(str(out / "classifier_head.safetensors"))
    with torch.no_grad():
        hidden = model.base_model.model.model(
            input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask)
        ).last_hidden_state[:, -1, :]
    logits = hidden.numpy() @ head["weight"].T + head["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected - expected.mean(axis=1, keepdims=True)).max() > 1e-3  # the texts' logits differ


def test_an_adapter_of_another_layout_is_refused(seq_cls_artifacts, tiny_artifacts, tmp_path):
    other = initial_theta(tiny_artifacts, read_manifest(tiny_artifacts))  # causal-lm-cls: no head, other layout
    adapter = tmp_path / "other.safetensors"
    save_theta(adapter, other, read_manifest(tiny_artifacts).layout)
    proc = _adapter_export(seq_cls_artifacts, adapter, tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
