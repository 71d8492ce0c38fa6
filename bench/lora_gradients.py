"""Where the LoRA gradient lives at θ₀, per block and per tensor: why standalone ZO is slow in causal-lm-cls.

A two-point SPSA step moves θ by -lr·(g·z)·z. In expectation that is -lr·∇L (the *signal*, |E g|² over batches),
while the step's second-order cost grows with the per-batch |g|² (the *noise*, E |g|²) times the curvature seen by
z. So a block is worth perturbing in proportion to its share of the signal, not of the values. This script measures
both by eager backprop (fp32, the reference the exported graph is checked against) over the first batches of the
device's train schedule, and prints them per block, per tensor kind and per range of blocks, each with its score
(signal share)² / (noise share): what a two-point step restricted to those values gains at its best rate, relative
to perturbing all of θ (score 1), curvature aside.

    .venv/bin/python bench/lora_gradients.py --artifacts artifacts/exp/causal-lm-cls [--batches 32] [--theta FILE]
        [--ranges 0-3,12-21]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cooperllm.checkpoint import load_theta
from cooperllm.data import load_dataset
from cooperllm.tokenization import PromptEncoder
from device_runtime.backends import open_backend
from device_runtime.batches import BatchSchedule


def batch_gradients(folder: Path, data: str, batches: int, theta_file: str | None) -> tuple[np.ndarray, object]:
    """One flat gradient of the loss w.r.t. θ per train batch (batch t of seed 0, as `device train` draws them)."""
    import torch

    backend = open_backend(folder, "eager")
    layout = backend.manifest.layout
    theta0 = load_theta(theta_file, layout) if theta_file else backend.initial_theta()
    encoder = PromptEncoder.for_artifacts(folder, backend.manifest)
    schedule = BatchSchedule(encoder.tokenize(load_dataset(data)), backend.batch_size, seed=0)
    grads = []
    for t in range(batches):
        b = schedule.batch(t)
        theta = torch.from_numpy(theta0.copy()).requires_grad_(True)
        params = layout.unflatten(theta)  # views into the one leaf tensor, so its .grad is the flat gradient
        inputs = tuple(torch.from_numpy(x) for x in (b.input_ids, b.attention_mask, b.labels))
        loss, _ = torch.func.functional_call(backend.module, params, inputs, strict=False)
        loss.backward()
        grads.append(theta.grad.numpy().copy())
    return np.stack(grads), layout


def _kind(tensor_name: str) -> str:
    """'lm.model.layers.3.self_attn.v_proj.lora_B.weight' → 'v_proj.lora_B'."""
    return ".".join(tensor_name.split(".")[-3:-1])


def table(grads: np.ndarray, layout, ranges: list[tuple[int, int]]) -> str:
    """Shares of the signal and the noise, with the score, per block, per tensor kind, per asked range and for the
    best contiguous range of blocks."""
    signal, noise = grads.mean(0) ** 2, (grads**2).mean(0)
    total_s, total_n = float(signal.sum()), float(noise.sum())

    def shares(idx: np.ndarray) -> tuple[float, float]:
        return float(signal[idx].sum()) / total_s, float(noise[idx].sum()) / total_n

    def row(name: str, idx: np.ndarray) -> str:
        s, n = shares(idx)
        score = s * s / n if n else 0.0
        values = f"{len(idx):,} ({100 * len(idx) / layout.total:.1f} %)"
        return f"| {name} | {values} | {100 * s:.1f} % | {100 * n:.1f} % | {score:.2f} |"

    def block_span(first: int, last: int) -> np.ndarray:
        return np.arange(layout.blocks[first].offset, layout.blocks[last].offset + layout.blocks[last].size)

    head = ["| {} | values | signal share | noise share | score |", "|---|---|---|---|---|"]
    rows = [head[0].format("block"), head[1]]
    rows += [row(b.name, block_span(b.index, b.index)) for b in layout.blocks]
    rows += ["", head[0].format("tensor kind (all blocks)"), head[1]]
    for kind in sorted({_kind(t.name) for t in layout.tensors}):
        idx = np.concatenate([np.arange(t.offset, t.offset + t.size) for t in layout.tensors if _kind(t.name) == kind])
        rows.append(row(kind, idx))
    # cumulative sums per block make every contiguous range O(1)
    per_block = np.array([shares(block_span(b.index, b.index)) for b in layout.blocks])
    s_cum, n_cum = (np.concatenate([[0.0], np.cumsum(per_block[:, k])]) for k in (0, 1))
    nb = len(layout.blocks)
    _, a, b = max(
        ((s_cum[b + 1] - s_cum[a]) ** 2 / (n_cum[b + 1] - n_cum[a]), a, b)
        for a in range(nb)
        for b in range(a, nb)
        if n_cum[b + 1] > n_cum[a]
    )
    rows += ["", head[0].format("blocks"), head[1], row(f"all {nb}", np.arange(layout.total))]
    rows += [row(f"{first}–{last}", block_span(first, last)) for first, last in ranges]
    rows.append(row(f"{a}–{b} (best contiguous range)", block_span(a, b)))
    rows.append(f"\n{len(grads)} batches: signal |E g|² = {total_s:.4g}, noise E |g|² = {total_n:.4g}")
    return "\n".join(rows)


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """'0-3,12-21' → [(0, 3), (12, 21)]."""
    out = []
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        out.append((int(first), int(last or first)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--data", default="../shared/data/sst2/train.tsv")
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--theta", help="θ (safetensors) to measure at instead of the artifact's θ₀")
    p.add_argument("--ranges", default="0-3,12-21", help="block ranges to score, e.g. '0-3,12-21'")
    args = p.parse_args()
    grads, layout = batch_gradients(args.artifacts, args.data, args.batches, args.theta)
    print(table(grads, layout, parse_ranges(args.ranges)))


if __name__ == "__main__":
    main()
