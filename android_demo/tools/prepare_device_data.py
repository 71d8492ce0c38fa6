"""Tokenize one device's share of a text-classification file for the Android demo (runs on the host, torch-free).

The phone has no BPE tokenizer in this demo, so its private examples are encoded here with the artifact's own
tokenizer, prompt template and sequence length (exactly what the Python device runtime feeds the same graph), and
pushed to the phone as safetensors: ``input_ids`` (N×L), ``attention_mask`` (N×L), ``labels`` (N), all int64.

    python android_demo/tools/prepare_device_data.py --artifacts ART --data ../shared/data/sst2/train.tsv \
        --n-devices 10 --device 0 --out device_data/train.safetensors
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from cooperllm.data import load_dataset, partition
from cooperllm.manifest import read_manifest
from cooperllm.tokenization import PromptEncoder

log = logging.getLogger("prepare_device_data")


def prepare(
    artifacts: Path,
    data: Path,
    out: Path,
    *,
    n_devices: int = 1,
    device: int = 0,
    split: str = "iid",
    seed: int = 0,
    limit: int | None = None,
    graph_format: str = "pte",
) -> dict:
    """Write ``out`` for device ``device`` of ``n_devices``; returns a summary (examples, seq_len, label counts)."""
    manifest = read_manifest(artifacts)
    graph = manifest.graph(graph_format)
    if not 0 <= device < n_devices:
        raise ValueError(f"device must be in [0, {n_devices}), got {device}")
    ds = load_dataset(data, label_names=list(manifest.task.label_names))
    idx = partition(ds, n_devices, split, seed)[device]
    if limit is not None:
        idx = idx[:limit]
    mine = ds.subset(idx)
    enc = PromptEncoder(artifacts / manifest.tokenizer_file, manifest.task, graph.seq_len)
    batch = enc.encode(list(mine.texts), mine.labels)
    tensors = {
        "input_ids": np.ascontiguousarray(batch.input_ids, dtype=np.int64),
        "attention_mask": np.ascontiguousarray(batch.attention_mask, dtype=np.int64),
        "labels": np.ascontiguousarray(batch.labels, dtype=np.int64),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": str(data), "device": str(device), "n_devices": str(n_devices), "seq_len": str(graph.seq_len)}
    save_file(tensors, str(out), metadata=meta)
    counts = np.bincount(tensors["labels"], minlength=manifest.task.num_classes).tolist()
    return {"examples": len(idx), "seq_len": graph.seq_len, "label_counts": counts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True, help="exported artifact folder (manifest.json)")
    p.add_argument("--data", type=Path, required=True, help="TSV/JSONL text-classification file")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors")
    p.add_argument("--n-devices", type=int, default=1)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--split", default="iid", help="iid or dirichlet:BETA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="keep at most this many examples")
    p.add_argument("--format", default="pte", choices=["pte", "onnx"], help="graph whose seq_len to use")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = prepare(
            args.artifacts,
            args.data,
            args.out,
            n_devices=args.n_devices,
            device=args.device,
            split=args.split,
            seed=args.seed,
            limit=args.limit,
            graph_format=args.format,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n, seq_len, counts = summary["examples"], summary["seq_len"], summary["label_counts"]
    print(f"wrote {args.out}: {n} examples, seq_len {seq_len}, labels {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
