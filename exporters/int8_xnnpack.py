"""Fast int8 weight-only route: frozen linears run inside XNNPACK as fp32-activation × int8-weight GEMMs (f32-qc8w).

Why: the plain-op int8 graph dequantizes every weight to fp32 on each forward (portable kernels, ~8× slower than
fp32 XNNPACK). XNNPACK has ``fully_connected_nc_f32_qc8w`` kernels: fp32 activations, per-channel int8 weights packed
once at load, no activation quantization — so the finite differences zeroth-order training reads stay exact.

ExecuTorch's stock partitioner only knows int8 weights together with (static or dynamic) quantized activations: a
``linear`` whose weight is ``dequantize_per_channel`` and whose activation is plain fp32 is classed STATIC_QUANT and
refused ("Expected act input to be dequant node"). ``WeightOnlyLinearConfig`` accepts exactly that pattern; the
serializer (``op_linear``) then writes an fp32 input, a per-channel qcint8 filter and an fp32 output, which the XNNPACK
runtime builds as an f32-qc8w fully-connected operator.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from exporters.quantize import new_summary, replace_frozen

log = logging.getLogger(__name__)

BACKEND = "xnnpack-qc8w"
QMIN, QMAX = -127, 127


def _register_quantized_decomposed() -> None:
    from torch.ao.quantization.fx._decomposed import quantized_decomposed_lib  # noqa: F401  (registers the ops)


class QC8WLinear(nn.Module):
    """y = x·dequant(q, s)ᵀ + b, q int8 per output channel (symmetric, zero point 0), as one recognisable op.

    In fp32 the weight is ``quantized_decomposed.dequantize_per_channel`` (what XNNPACK's partitioner matches);
    in any other dtype (the fp64 fidelity reference) it is the same product in plain ops.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        _register_quantized_decomposed()
        w = linear.weight.detach().to(torch.float32)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / float(QMAX)
        self.register_buffer("qweight", torch.clamp(torch.round(w / scale[:, None]), QMIN, QMAX).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros_like(scale, dtype=torch.int64))
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)

    def weight(self) -> torch.Tensor:
        if self.scale.dtype != torch.float32:
            return self.qweight.to(self.scale.dtype) * self.scale[:, None]
        return torch.ops.quantized_decomposed.dequantize_per_channel(
            self.qweight, self.scale, self.zero_point, 0, QMIN, QMAX, torch.int8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a bias goes on as its own add: XNNPACK's serializer takes a bias beside a quantized weight only when the
        # activation is quantized too ("Weight and Input should both be quantized"; Qwen2's q/k/v have biases)
        y = F.linear(x, self.weight())
        return y if self.bias is None else y + self.bias


def quantize_qc8w(module: nn.Module, embeddings: bool = True, skip: tuple[nn.Module, ...] = ()) -> dict:
    """Replace frozen nn.Linear by QC8WLinear (and embeddings by row-wise int8); LoRA and heads stay fp32."""
    summary = new_summary("int8", kernel="xnnpack f32-qc8w (fp32 activations, int8 per-channel weights)")
    replace_frozen(module, QC8WLinear, summary, embeddings, skip)
    log.info("quantized %d linear layers for XNNPACK f32-qc8w", summary["quantized_linear"])
    return summary


def partitioner():
    """XNNPACK partitioner whose linear config also takes fp32-activation × dequantized-int8-weight linears."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS  # deferred: loads executorch
    from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig  # deferred: loads executorch

    # deferred: loads executorch (heavy; not needed at import)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,  # deferred: loads executorch
    )
    from executorch.backends.xnnpack.utils.quant_utils import (  # deferred: loads executorch
        is_dequant,
        is_per_channel,
        tag_as_implicit_q_dq,
    )
    from executorch.backends.xnnpack.utils.utils import get_input_node, is_param_node  # deferred: loads executorch

    class WeightOnlyLinearConfig(LinearConfig):
        def get_deps(self, node, ep):
            weight = get_input_node(node, self.weight_idx)
            act = get_input_node(node, self.act_idx)
            if not (is_dequant(weight) and is_per_channel(weight)) or is_dequant(act):
                return super().get_deps(node, ep)  # fp32, static- or dynamic-quant linears: stock behaviour
            qweight = get_input_node(weight, 0)
            if not is_param_node(ep, qweight) or len(weight.all_input_nodes) < 2:
                return False, []
            deps = [weight, qweight, *weight.all_input_nodes[1:3]]
            if len(node.all_input_nodes) > 2 and self.bias_idx is not None:
                bias = get_input_node(node, self.bias_idx)
                if bias is not None:
                    if not is_param_node(ep, bias):
                        return False, []
                    deps.append(bias)
            tag_as_implicit_q_dq(weight)
            return True, deps

    configs = [WeightOnlyLinearConfig if c is LinearConfig else c for c in ALL_PARTITIONER_CONFIGS]
    # the only fp32 linears left are the LoRA factors, which arrive as graph inputs: let XNNPACK take them too
    return XnnpackPartitioner(configs=configs, force_non_static_weights_for_f32_linear=True)
