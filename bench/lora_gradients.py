"""Where the LoRA gradient lives at θ₀, per block and per tensor: why standalone ZO is slow in causal-lm-cls.

A two-point SPSA step moves θ by -lr·(g·z)·z. In expectation that is -lr·∇L (the *signal*, |E g|² over batches),
while the step's second-order cost grows with the per-batch |g|² (the *noise*, E |g|²) times the curvature seen by
z. So a block is worth perturbing in proportion to its share of the signal, not of the values. This script measures
both by eager backprop (fp32, the reference the exported graph is checked against) over the first batches of the
device's train schedule, and prints them per block with the split over the block's tensors.

    .venv/bin/python bench/lora_gradients.py --artifacts artifacts/exp/causal-lm-cls [--batches 32] [--theta FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def batch_gradients(folder: Path, data: str, batches: int, theta_file: str | None) -> tuple[np.ndarray, object]:
    """One flat gradient of the loss w.r.t. θ per train batch (batch t of seed 0, as `device train` draws them)."""
    import torch

    from cooperllm.checkpoint import load_theta
    from cooperllm.data import load_dataset
    from cooperllm.tokenization import PromptEncoder
    from device_runtime.backends import open_backend
    from device_runtime.batches import BatchSchedule
    from device_runtime.train import initial_theta

    backend = open_backend(folder, "eager")
    layout = backend.manifest.layout
    theta0 = load_theta(theta_file, layout) if theta_file else initial_theta(backend)
    encoder = PromptEncoder.for_artifacts(folder, backend.manifest)
    schedule = BatchSchedule(encoder.tokenize(load_dataset(data)), backend.batch_size, seed=0)
    grads = []
    for t in range(batches):
        b = schedule.batch(t)
        theta = torch.from_numpy(theta0.copy()).requires_grad_(True)
        params = {s.name: theta[s.offset : s.offset + s.size].view(*s.shape) for s in layout.tensors}
        inputs = tuple(torch.from_numpy(x) for x in (b.input_ids, b.attention_mask, b.labels))
        loss, _ = torch.func.functional_call(backend.module, params, inputs, strict=False)
        loss.backward()
        grads.append(theta.grad.numpy().copy())
    return np.stack(grads), layout


def _kind(tensor_name: str) -> str:
    """'lm.model.layers.3.self_attn.v_proj.lora_B.weight' → 'v_proj.lora_B'."""
    return ".".join(tensor_name.split(".")[-3:-1])


def table(grads: np.ndarray, layout) -> str:
    """Shares of the signal and the noise per block, then per tensor kind summed over the blocks."""
    signal, noise = grads.mean(0) ** 2, (grads**2).mean(0)
    total_s, total_n = float(signal.sum()), float(noise.sum())

    def row(name: str, idx: np.ndarray | slice, values: int) -> str:
        s, n = 100 * signal[idx].sum() / total_s, 100 * noise[idx].sum() / total_n
        return f"| {name} | {values:,} ({100 * values / layout.total:.1f} %) | {s:.1f} % | {n:.1f} % |"

    head = ["| {} | values | signal share | noise share |", "|---|---|---|---|"]
    rows = [head[0].format("block"), head[1]]
    rows += [row(b.name, slice(b.offset, b.offset + b.size), b.size) for b in layout.blocks]
    rows += ["", head[0].format("tensor kind (all blocks)"), head[1]]
    for kind in sorted({_kind(t.name) for t in layout.tensors}):
        idx = np.concatenate([np.arange(t.offset, t.offset + t.size) for t in layout.tensors if _kind(t.name) == kind])
        rows.append(row(kind, idx, len(idx)))
    rows.append(f"\n{len(grads)} batches: signal |E g|² = {total_s:.4g}, noise E |g|² = {total_n:.4g}")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--data", default="../shared/data/sst2/train.tsv")
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--theta", help="θ (safetensors) to measure at instead of the artifact's θ₀")
    args = p.parse_args()
    grads, layout = batch_gradients(args.artifacts, args.data, args.batches, args.theta)
    print(table(grads, layout))


if __name__ == "__main__":
    main()
