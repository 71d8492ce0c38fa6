"""The exportable loss function: ``(input_ids, attention_mask, labels, *θ tensors) -> (loss, label_logits)``.

Trainable tensors (LoRA factors, the seq-cls head) are substituted with ``torch.func.functional_call`` so they become
graph inputs in layout order; every other weight stays a constant of the graph. The loss itself is
``cooperllm.modeling.ClassifierLoss``: the exporter, the cloud and the eager reference compute the same function.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from cooperllm.layout import ParamLayout


class ThetaInputs(nn.Module):
    """Wraps a ClassifierLoss so θ's tensors are positional inputs (one per layout tensor, in layout order)."""

    def __init__(self, loss_module: nn.Module, names: Sequence[str]):
        super().__init__()
        self.inner = loss_module
        self.names = list(names)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *theta: torch.Tensor
    ):
        params = dict(zip(self.names, theta, strict=True))
        loss, logits = torch.func.functional_call(self.inner, params, (input_ids, attention_mask, labels))
        return loss, logits


def example_inputs(
    layout: ParamLayout, theta: dict[str, torch.Tensor], batch_size: int, seq_len: int, vocab: int, num_classes: int
) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs: left-padded ids, a mask, labels, then θ in layout order."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch_size, seq_len), generator=gen, dtype=torch.int64)
    mask = torch.ones(batch_size, seq_len, dtype=torch.int64)
    for i in range(batch_size):  # varied left padding, so masking is exercised at trace and check time
        pad = (i * seq_len) // (2 * batch_size)
        mask[i, :pad] = 0
    labels = torch.arange(batch_size, dtype=torch.int64) % num_classes
    return (ids, mask, labels, *(theta[n].contiguous() for n in layout.names))


def export_program(
    wrapper: ThetaInputs, args: tuple[torch.Tensor, ...], min_seq_len: int | None = None
) -> torch.export.ExportedProgram:
    """torch.export with non-strict tracing; static shapes (the device feeds fixed batch × seq_len) unless
    ``min_seq_len`` is given: then the sequence dimension of the ids and the mask is dynamic in [min_seq_len, the
    traced length] (length buckets: one program, memory planned for the longest)."""
    dynamic_shapes = None
    seq_len = args[0].shape[1]
    if min_seq_len is not None and min_seq_len < seq_len:
        seq = torch.export.Dim("seq", min=min_seq_len, max=seq_len)
        dynamic_shapes = ({1: seq}, {1: seq}, None, tuple(None for _ in args[3:]))
    with torch.no_grad(), eager_attention(getattr(wrapper.inner, "lm", None)):
        return torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes, strict=False)


@contextmanager
def eager_attention(lm: nn.Module | None) -> Iterator[None]:
    """Trace the model with transformers' eager attention (matmul, mask add, softmax, matmul), then put back the
    implementation it had.

    Why: SDPA decomposes, on the way to the edge dialect, into a graph that XNNPACK delegates in more pieces, with
    per-layer mask fix-ups (eq, any, logical_not, where) and scalings left to the portable kernels between them. The
    eager form lowers into fewer delegated pieces: SmolLM2-135M int8, batch 8 × 64, native runner, forward 703 against
    758 ms, and the ZO step no longer slower than eager MeZO's (docs/DEVICE.md). The function is the same: the
    exporter's parity check compares the graph with the module on its own attention (SDPA), in fp32 and fp64, so a
    difference between the two fails the export. (The fp64 reference must not run eager attention: its softmax runs
    in fp32, where fp64's most negative mask value overflows to −inf and a fully padded row becomes NaN.)
    """
    setter = getattr(lm, "set_attn_implementation", None)
    if setter is None:  # not a transformers model (nothing to choose)
        yield
        return
    before = lm.config._attn_implementation
    setter("eager")
    try:
        yield
    finally:
        setter(before)
