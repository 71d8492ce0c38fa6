"""The paired variant: L(θ+εz) and L(θ−εz) in one call.

Every θ input is stacked as ``(2, *shape)`` = [θ₊, θ₋]; the batch runs twice (2B rows) through the frozen weights,
while each trainable linear (LoRA factors, the seq-cls head) applies its own half of the stack with a batched matmul.
Outputs: ``loss`` (2,) = [L₊, L₋] and ``label_logits`` (2, B, C). What it can save over two calls: per-call overhead,
and dequantizing/packing the frozen weights once per pair instead of twice; the matmul work is the same.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cooperllm.layout import ParamLayout
from cooperllm.tokenization import EncodedBatch
from exporters.inputs import direction, paired_inputs


class PairedLinear(nn.Module):
    """Linear with a stacked (2, out, in) weight: the first half of the batch uses [0], the second half [1]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().unsqueeze(0).repeat(2, 1, 1))
        self.bias = nn.Parameter(linear.bias.detach().unsqueeze(0).repeat(2, 1)) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.bmm(x.reshape(2, -1, x.shape[-1]), self.weight.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y.reshape(*lead, y.shape[-1])


def make_paired(loss_module: nn.Module, layout: ParamLayout) -> nn.Module:
    """A copy of the (quantized) loss module whose trainable linears take stacked weights; frozen parts shared."""
    paired = copy.copy(loss_module)  # shallow: frozen submodules are shared, trainable ones replaced below
    paired._modules = dict(loss_module._modules)
    owners = {name.rsplit(".", 1)[0] for name in layout.names}
    for owner in sorted(owners, key=len):
        _replace(paired, owner)
    return paired


def _replace(root: nn.Module, path: str) -> None:
    """Replace the linear at ``path`` by a PairedLinear, copying (not mutating) every module on the way down."""
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        child = copy.copy(node._modules[part])
        child._modules = dict(child._modules)
        node._modules[part] = child
        node = child
    node._modules[parts[-1]] = PairedLinear(node._modules[parts[-1]])


class PairedThetaInputs(nn.Module):
    """(input_ids, attention_mask, labels, *stacked θ) -> (loss (2,), label_logits (2, B, C))."""

    def __init__(self, paired_module: nn.Module, names: Sequence[str]):
        super().__init__()
        self.inner = paired_module
        self.names = list(names)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *theta: torch.Tensor
    ):
        params = dict(zip(self.names, theta, strict=True))
        both = (
            torch.cat([input_ids, input_ids]),
            torch.cat([attention_mask, attention_mask]),
            torch.cat([labels, labels]),
        )
        _, logits = torch.func.functional_call(self.inner, params, both)
        logits = logits.reshape(2, input_ids.shape[0], logits.shape[-1])
        # the same F.cross_entropy as ClassifierLoss, once per half
        loss = torch.stack([F.cross_entropy(logits[0], labels), F.cross_entropy(logits[1], labels)])
        return loss, logits


def validate_paired(runner, eager32, eager64, batch: EncodedBatch, theta: np.ndarray, seeds, eps_values) -> dict:
    """Parity of both halves against eager fp32, and the one-call finite difference against eager fp64."""
    from exporters import validate as v

    layout = eager32.layout
    theta = np.asarray(theta, dtype=np.float32)
    other = theta + np.float32(1e-2) * direction(99, layout)
    losses, logits = runner(paired_inputs(batch, theta, other, layout))
    ref0, logits0 = eager32(batch, theta)
    ref1, logits1 = eager32(batch, other)
    abs_diff = max(abs(float(losses[0]) - ref0), abs(float(losses[1]) - ref1))
    logit_diff = float(max(np.max(np.abs(logits[0] - logits0)), np.max(np.abs(logits[1] - logits1))))
    parity = {
        "loss": float(losses[0]),
        "eager_loss": ref0,
        "abs_diff": abs_diff,
        "max_logit_diff": logit_diff,
        "atol": v.PARITY_ATOL,
    }
    parity["passed"] = bool(abs_diff <= v.PARITY_ATOL and logit_diff <= 10 * v.PARITY_ATOL)
    fidelity = []
    for seed in seeds:
        z = direction(seed, layout)
        for eps in eps_values:
            pair = runner(paired_inputs(batch, theta + np.float32(eps) * z, theta - np.float32(eps) * z, layout))[0]
            g_rt = (float(pair[0]) - float(pair[1])) / (2 * eps)
            t64, z64 = theta.astype(np.float64), z.astype(np.float64)
            g_ref = (eager64(batch, t64 + eps * z64)[0] - eager64(batch, t64 - eps * z64)[0]) / (2 * eps)
            fidelity.append(v.fidelity_entry(seed, eps, g_rt, g_ref))
    return {
        "parity": parity,
        "fidelity": fidelity,
        "fidelity_rtol": v.FIDELITY_RTOL,
        "paired": True,
        "passed": bool(parity["passed"] and all(f["passed"] for f in fidelity)),
    }
