"""Architectures beyond Llama (Qwen2, Gemma, Phi-3, GPT-2), each a tiny random config built here (no download):
exported int8 for XNNPACK and int4 for ONNX Runtime with parity and ZO fidelity checked, a few ZO steps of the
torch-free device loop on the native runner, and two federated rounds against the real cloud.

The Llama family is the rest of the suite's tiny model (tests/conftest.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cooperllm.adapter import DEFAULT_TARGETS, FAMILY_TARGETS, AdapterSpec
from cooperllm.checkpoint import load_theta
from cooperllm.layout import theta_checksum
from cooperllm.manifest import read_manifest
from cooperllm.models import TESTED_FAMILIES, load_causal_lm
from cooperllm.tasks import SEQ_CLS, TaskSpec
from cooperllm.tiny import make_tiny_model
from cooperllm_app.simulation.config import SimConfig
from cooperllm_app.simulation.metrics import read_lines
from cooperllm_app.simulation.runner import simulate
from exporters import ExportError, export_artifacts

OTHER_FAMILIES = [f for f in TESTED_FAMILIES if f != "llama"]
BATCH, SEQ = 4, 24


@pytest.fixture(scope="module", params=OTHER_FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(model_type, a tiny random model folder of that family)."""
    name = request.param
    return name, make_tiny_model(tmp_path_factory.mktemp(f"tiny-{name}"), name)


@pytest.fixture(scope="module")
def int8_pte(family: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """causal-lm-cls, int8 weights in XNNPACK's f32×qc8w GEMMs (the device's fast path), validated."""
    name, model = family
    out = tmp_path_factory.mktemp(f"{name}-int8")
    export_artifacts(
        model,
        out,
        task=TaskSpec(),
        backend="xnnpack-qc8w",
        quant="int8",
        batch_size=BATCH,
        seq_len=SEQ,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def train_tsv(sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("families-data") / "train.tsv"
    path.write_text("\n".join((sst2_dir / "train.tsv").read_text().splitlines()[:41]) + "\n")
    return path


def test_int8_export_lowers_to_xnnpack_with_parity_and_zo_fidelity(family, int8_pte):
    name, model = family
    manifest = read_manifest(int8_pte)
    assert manifest.adapter is not None and manifest.adapter.targets == FAMILY_TARGETS.get(name, DEFAULT_TARGETS)
    report = manifest.validation["graphs"]["model.pte"]
    assert manifest.validation["passed"] and report["passed"] and report["parity"]["passed"]
    assert report["delegation"]["delegated_ops"] > 0
    lm = load_causal_lm(model)  # every frozen linear of the layers is quantized (the unused LM head is not)
    frozen = [n for n, m in lm.named_modules() if type(m).__name__ == "Linear" and n != "lm_head"]
    assert manifest.quantization["quantized_linear"] == len(frozen)
    assert [b.name for b in manifest.layout.blocks] == ["layer.0", "layer.1"]


def test_int4_seq_cls_exports_to_onnx_with_parity_and_zo_fidelity(family, tmp_path):
    _, model = family
    manifest = export_artifacts(
        model,
        tmp_path,
        task=TaskSpec(mode=SEQ_CLS),
        formats=("onnx",),
        quant="int4",
        batch_size=BATCH,
        seq_len=SEQ,
        progress=False,
    )
    assert manifest.validation["passed"] and manifest.quantization["group_size"] == 32
    assert manifest.quantization["quantized_linear"] > 0
    assert [b.name for b in manifest.layout.blocks] == ["layer.0", "layer.1", "head"]


def test_targets_the_family_lacks_are_refused_naming_its_linears(family, tmp_path):
    _, model = family
    with pytest.raises(ExportError, match="match no linear module; this model has"):
        export_artifacts(
            model,
            tmp_path,
            task=TaskSpec(),
            adapter=AdapterSpec(targets=("nope_proj",)),
            validate=False,
            progress=False,
        )


def test_the_native_device_loop_takes_zo_steps_without_torch(int8_pte, train_tsv, tmp_path):
    cmd = [
        *(sys.executable, "-m", "device_runtime", "--log-level", "WARNING", "train", "--artifacts", str(int8_pte)),
        *("--backend", "native", "--data", str(train_tsv), "--steps", "3", "--lr", "0.05", "--no-progress"),
        *("--json", "--state", str(tmp_path / "state")),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.splitlines()[-1])
    assert (summary["backend"], summary["steps"], summary["torch_loaded"]) == ("native", 3, False)
    assert np.isfinite(summary["first_loss"]) and np.isfinite(summary["last_loss"])
    manifest = read_manifest(int8_pte)
    theta0 = load_theta(int8_pte / manifest.initial_adapter_file, manifest.layout)
    assert summary["theta_sha256"] != theta_checksum(theta0)  # the steps moved θ


def test_two_federated_rounds_close_with_both_devices_and_move_theta(family, int8_pte, train_tsv, sst2_dir, tmp_path):
    """The cloud builds the same family's loss module from the manifest (its θ layout must match the artifacts'),
    sends guidance; two native devices measure, upload and replay round 0 before round 1."""
    _, model = family
    cfg = SimConfig(
        artifacts=str(int8_pte),
        model=str(model),
        clients=2,
        per_round=2,
        rounds=2,
        local_steps=1,
        workers=2,
        train_data=str(train_tsv),
        public_data=str(sst2_dir / "dev.tsv"),
        public_n=32,
        test_data=str(sst2_dir / "test.tsv"),
        eval_limit=8,
        final_eval_limit=8,
        link="inf",
    )
    simulate(cfg, tmp_path / "run", progress=False)
    with sqlite3.connect(tmp_path / "run" / "cloud" / "cooperllm.db") as db:
        rounds = db.execute(
            "SELECT round, status, n_devices, theta_checksum, theta_checksum_after FROM rounds ORDER BY round"
        ).fetchall()
    assert [(r, s, d) for r, s, d, *_ in rounds] == [(0, "closed", 2), (1, "closed", 2)]
    assert all(before != after for *_, before, after in rounds)
    lines = [m for m in read_lines(tmp_path / "run" / "metrics.jsonl") if m["kind"] == "round"]
    assert [m["round"] for m in lines] == [0, 1] and all(m["device_torch"] is False for m in lines)


def test_a_sentence_scores_the_same_whatever_its_left_padding(family):
    """Left padding moves a sentence to the right of the window: masked pads must not change its label logits. For
    GPT-2's learned absolute positions that needs position ids from the mask (cooperllm.modeling.last_hidden); the
    rotary families see only relative positions."""
    import torch

    from cooperllm.modeling import build_task_model
    from cooperllm.tokenization import PromptEncoder

    _, model = family
    texts, labels = ["a gorgeous , witty , seductive movie .", "meh ."], np.array([1, 0])
    logits = []
    for seq_len in (40, 64):
        encoder = PromptEncoder(model / "tokenizer.json", TaskSpec(), seq_len)
        module, _ = build_task_model(load_causal_lm(model), encoder, AdapterSpec())
        batch = encoder.encode(texts, labels)
        with torch.inference_mode():
            args = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.labels))
            logits.append(module(*args)[1].numpy())
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)


def test_a_model_that_is_not_a_causal_lm_is_refused_at_export(tmp_path):
    """An encoder-decoder (T5) has no causal-LM class in transformers: one ExportError naming the folder, no trace."""
    from transformers import T5Config, T5ForConditionalGeneration

    from cooperllm.tiny import build_tiny_tokenizer

    model = tmp_path / "t5"
    config = T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, pad_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(model)
    build_tiny_tokenizer().save(str(model / "tokenizer.json"))
    with pytest.raises(ExportError, match="does not load as a causal LM"):
        export_artifacts(model, tmp_path / "out", task=TaskSpec(), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
