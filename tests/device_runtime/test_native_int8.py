"""The fast int8 weight-only route (``--backend xnnpack-qc8w``): every frozen linear inside XNNPACK as f32-qc8w,
the exporter's parity and ZO-fidelity checks pass, and it computes the same function as the plain-op int8 graph."""

from __future__ import annotations

import numpy as np
import pytest
from test_native import random_inputs

from cooperllm.manifest import read_manifest
from cooperllm.tasks import TaskSpec
from device_runtime.native.binding import NativeRunner
from exporters import export_artifacts
from exporters.errors import ExportError


@pytest.fixture(scope="module")
def qc8w_artifacts(export_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-qc8w")
    # validate: parity with eager fp32 and finite-difference fidelity vs eager fp64, or no manifest
    export_tiny(out, formats=("pte",), backend="xnnpack-qc8w", quant="int8", batch_size=8, seq_len=32, validate=True)
    return out


def test_qc8w_export_passes_the_exporters_checks_with_linears_delegated(qc8w_artifacts):
    m = read_manifest(qc8w_artifacts)
    g = m.graph("pte")
    assert g.backend == "xnnpack-qc8w"
    v = m.validation["graphs"][g.file]
    assert v["passed"] and all(f["passed"] for f in v["fidelity"])
    outside = v["delegation"]["non_delegated_by_op"]
    # no weight is dequantized outside the delegate and no frozen matmul falls back to portable/optimized kernels
    assert not any("dequantize" in op or op.startswith(("aten_mm", "aten_linear", "aten_addmm")) for op in outside)
    assert m.quantization["scheme"] == "int8" and m.quantization["activations"] == "fp32"
    assert m.quantization["quantized_linear"] == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_qc8w_computes_the_same_function_as_plain_int8(qc8w_artifacts, tiny_artifacts):
    """Same per-channel int8 weights: XNNPACK's f32-qc8w GEMM vs in-graph dequantization on the same batch and θ."""
    fast = NativeRunner(qc8w_artifacts / read_manifest(qc8w_artifacts).graph("pte").file)
    plain = NativeRunner(tiny_artifacts / "model.pte")
    assert fast.input_specs == plain.input_specs
    for seed in (0, 1):
        inputs = random_inputs(fast.input_specs, seed)
        (a, la), (b, lb) = fast(inputs), plain(inputs)
        assert abs(a - b) <= 1e-5
        assert np.abs(la - lb).max() <= 1e-4


@pytest.mark.parametrize(
    ("quant", "formats"), [("none", ("pte",)), ("int4", ("pte",)), ("int8", ("pte", "onnx")), ("8da4w", ("pte",))]
)
def test_qc8w_refuses_other_schemes_and_onnx(tiny_model_dir, tmp_path, quant, formats):
    with pytest.raises(ExportError, match="xnnpack-qc8w|refused"):
        export_artifacts(
            tiny_model_dir, tmp_path, task=TaskSpec(), formats=formats, backend="xnnpack-qc8w", quant=quant
        )
