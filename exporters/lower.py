"""Lowering an exported loss program to ExecuTorch (.pte, XNNPACK or portable kernels) and to ONNX.

Both writers keep the quantized weights as int8 constants: ONNX's graph optimizer would fold the in-graph
dequantization back into fp32 initializers, so it is turned off (ONNX Runtime optimizes at load time anyway, with
its own constant folding disabled by the runners).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from cooperllm.manifest import OUTPUTS
from exporters.api import PTE_BACKENDS
from exporters.errors import ExportError
from exporters.int8_xnnpack import partitioner as qc8w_partitioner

log = logging.getLogger(__name__)


def to_pte(
    program: torch.export.ExportedProgram, backend: str, path: str | os.PathLike, dynamic_weights: bool = False
) -> dict:
    """Write ``path``; returns the delegation summary.

    ``dynamic_weights`` lets XNNPACK take linears whose weight is computed in the graph (dequantized int8/int4
    weights, and the LoRA factors that arrive as inputs); without it those matmuls fall back to portable kernels.
    For fp32 it is off so the frozen weights stay pre-packed inside the delegate.
    """
    from executorch.exir import to_edge_transform_and_lower  # deferred: loads executorch (heavy; not needed at import)

    if backend not in PTE_BACKENDS:
        raise ExportError(f"unknown ExecuTorch backend {backend!r}; choose one of {', '.join(PTE_BACKENDS)}")
    partitioner = []
    if backend == "xnnpack":
        # deferred: loads executorch (heavy; not needed at import)
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,  # deferred: loads executorch
        )

        partitioner = [XnnpackPartitioner(force_non_static_weights_for_f32_linear=dynamic_weights)]
    elif backend == "xnnpack-qc8w":
        partitioner = [qc8w_partitioner()]
    edge = to_edge_transform_and_lower(program, partitioner=partitioner)
    info = delegation_summary(edge.exported_program().graph_module)
    et_program = edge.to_executorch()
    with open(path, "wb") as f:
        et_program.write_to_file(f)
    return info


def delegation_summary(graph_module: torch.fx.GraphModule) -> dict:
    """Delegated vs non-delegated op counts, and which op types stay outside the delegate."""
    from executorch.devtools.backend_debug import get_delegation_info  # deferred: loads executorch

    info = get_delegation_info(graph_module)
    outside = Counter({op: b.non_delegated for op, b in info.delegation_by_operator.items() if b.non_delegated > 0})
    return {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_ops": info.num_delegated_nodes,
        "non_delegated_ops": info.num_non_delegated_nodes,
        "non_delegated_by_op": dict(outside.most_common()),
    }


def to_onnx(program: torch.export.ExportedProgram, input_names: Sequence[str], path: str | os.PathLike) -> dict:
    """Write a single-file ONNX model (external data only past protobuf's 2 GB limit)."""
    onnx_program = torch.onnx.export(
        program,
        (),
        dynamo=True,
        input_names=list(input_names),
        output_names=list(OUTPUTS),
        optimize=False,
        verbose=False,
    )
    if onnx_program is None:
        raise ExportError("torch.onnx.export returned no program")
    for node in onnx_program.model.graph.all_nodes():
        node.metadata_props.clear()  # per-node stack traces and class paths: ~0.5 MB per layer, no runtime use
    onnx_program.save(str(path), external_data=False)
    import onnx  # deferred: loads onnx (heavy; not needed at import)

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    dtypes = Counter(onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name for i in model.graph.initializer)
    log.info("ONNX graph %s: %d nodes, initializers %s", Path(path).name, sum(ops.values()), dict(dtypes))
    return {"nodes": sum(ops.values()), "initializer_dtypes": dict(dtypes)}
