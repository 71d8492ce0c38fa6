"""Integration: the real SmolLM2 exported to ONNX int8, checked with ONNX Runtime against an eager rebuild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cooperllm.adapter import AdapterSpec
from cooperllm.checkpoint import initial_theta
from cooperllm.manifest import read_manifest
from cooperllm.models import load_causal_lm, resolve_model
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder
from exporters import export_artifacts
from exporters.inputs import direction, graph_inputs
from exporters.runners import OrtRunner

pytestmark = pytest.mark.integration


def test_smollm2_onnx_int8_export_matches_eager(tmp_path: Path) -> None:
    from cooperllm.modeling import build_task_model
    from exporters.quantize import quantize_frozen
    from exporters.validate import EagerFunction

    model_dir = resolve_model("smollm2")
    export_artifacts(
        "smollm2", tmp_path, task=TaskSpec(), formats=("onnx",), quant="int8", batch_size=4, seq_len=48, progress=False
    )
    manifest = read_manifest(tmp_path)
    assert manifest.layout.total == 460_800 and len(manifest.layout.blocks) == 30
    assert manifest.validation["passed"]
    result = manifest.validation["graphs"]["model.onnx"]
    assert result["parity"]["abs_diff"] <= 1e-4
    assert max(f["rel_err"] for f in result["fidelity"]) <= 0.05
    # int8 weights and an int8 embedding stored once: well under 45 % of the fp32 checkpoint (538 MB)
    assert (tmp_path / "model.onnx").stat().st_size <= 0.45 * (model_dir / "model.safetensors").stat().st_size
    big = [tuple(i.dims) for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer if np.prod(i.dims) > 1e7]
    assert big == [(49152, 576)]  # the tied table once (int8), no LM head copy

    # independent eager rebuild, fresh texts, a θ the export never saw
    lm = load_causal_lm(model_dir)
    module, layout = build_task_model(lm, PromptEncoder.for_artifacts(tmp_path, manifest), AdapterSpec())
    quantize_frozen(module, "int8", skip=(lm.get_output_embeddings(),))
    import torch

    eager = EagerFunction(module, layout, torch.float32)
    encoder = PromptEncoder(tmp_path / manifest.tokenizer_file, manifest.task, 48)
    batch = encoder.encode(
        ["an utterly charming film", "a waste of two hours", "fine.", "i loved every minute"], [1, 0, 1, 1]
    )
    theta = initial_theta(tmp_path, manifest) + np.float32(1e-3) * direction(5, layout)
    loss, logits = OrtRunner(tmp_path / "model.onnx")(graph_inputs(batch, theta, layout))
    ref_loss, ref_logits = eager(batch, theta)
    assert abs(loss - ref_loss) <= 1e-4
    np.testing.assert_allclose(logits, ref_logits, atol=1e-3)
