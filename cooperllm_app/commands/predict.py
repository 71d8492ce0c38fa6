"""``cooperllm predict``: classify sentences with an exported model and a trained adapter, as a phone would.

It runs the artifact's own graph through the device runtime (torch-free), so what it prints is what the fine-tuned
model does on the device: the same tokenizer, template, quantized weights and θ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cooperllm.checkpoint import initial_theta, load_theta

BACKENDS = ("native", "executorch", "onnx", "eager")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify sentences with an exported model and a trained adapter (the device's graph)",
        description="Print each text's predicted class and the class probabilities, computed by the artifact's graph "
        "with the adapter's θ (the exporter's starting θ without --adapter). Texts come from the command line, from "
        "--file (one per line), or from standard input with --file -.",
    )
    p.add_argument("--artifacts", required=True, help="exported artifact folder (its manifest names the task)")
    p.add_argument("--adapter", help="trained θ (safetensors), e.g. a run's final adapter; default: the start θ")
    p.add_argument("--file", help="a text file with one text per line ('-': standard input)")
    p.add_argument("--backend", choices=BACKENDS, help="graph backend (default: the manifest's first graph)")
    p.add_argument("--json", action="store_true", help="one JSON object per text instead of a table")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.set_defaults(func=run)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(args.file)
            if not path.is_file():
                raise ValueError(f"{path}: no such file (--file takes a text file with one text per line)")
            lines = path.read_text(encoding="utf-8").splitlines()
        texts += [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError("nothing to classify: give texts as arguments or --file FILE")
    return texts


def predict(session, theta: np.ndarray, texts: list[str]) -> np.ndarray:
    """Class probabilities (len(texts) × C) through the session's fixed-batch graph; the last batch is padded with
    its first text and the padding dropped."""
    batch_size = session.backend.batch_size
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        padded = chunk + [chunk[0]] * (batch_size - len(chunk))
        batch = session.encoder.encode(padded, np.zeros(batch_size, dtype=np.int64))
        _, logits = session.backend.run(batch, theta)
        out.append(softmax(np.asarray(logits))[: len(chunk)])
    return np.concatenate(out)


def run(args: argparse.Namespace) -> int:
    from device_runtime.session import open_session  # deferred: loads the graph runtime

    texts = read_texts(args)
    session = open_session(args.artifacts, args.backend, warm_up=False)
    manifest = session.manifest
    theta = load_theta(args.adapter, manifest.layout) if args.adapter else initial_theta(args.artifacts, manifest)
    probs = predict(session, theta, texts)
    names = manifest.task.label_names
    for text, p in zip(texts, probs, strict=True):
        best = int(p.argmax())
        if args.json:
            probabilities = dict(zip(names, p.tolist(), strict=True))
            print(json.dumps({"text": text, "label": names[best], "probabilities": probabilities}))
        else:
            print(f"{names[best]}\t{p[best]:.3f}\t{text}")
    return 0
