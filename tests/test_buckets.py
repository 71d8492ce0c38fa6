"""Length buckets: one program with a dynamic sequence length, validated at every bucket, that each device backend
runs at the smallest bucket holding a batch — with the loss it computes at the full length (padding is masked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cooperllm.manifest import read_manifest
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder, TokenizedCorpus, last_tokens
from device_runtime.backends import open_backend
from device_runtime.batches import BatchSchedule
from exporters import ExportError, export_artifacts

BATCH, SEQ, BUCKETS = 4, 32, (16, 32)
SHORT = ["good", "bad", "fine film", "dull"]  # prompts of a dozen tokens: they fit the 16 bucket
LONG = ["a charming and often affecting journey with fine acting, " * 2, *SHORT[1:]]


@pytest.fixture(scope="module")
def bucketed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The .pte (XNNPACK f32×qc8w, the device's fast path) and the .onnx export, each with buckets 16 and 32."""
    folders = {}
    for fmt, backend in (("pte", "xnnpack-qc8w"), ("onnx", "xnnpack")):
        folders[fmt] = tmp_path_factory.mktemp(f"buckets-{fmt}")
        export_artifacts(
            tiny_model_dir,
            folders[fmt],
            task=TaskSpec(),
            formats=(fmt,),
            backend=backend,
            quant="int8",
            batch_size=BATCH,
            seq_len=SEQ,
            seq_buckets=BUCKETS,
            progress=False,
        )
    return folders


def encoded(folder: Path, texts: list[str]):
    manifest = read_manifest(folder)
    encoder = PromptEncoder.for_artifacts(folder, manifest)
    return encoder.encode(texts, np.arange(len(texts)) % 2)


@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_the_manifest_lists_the_buckets_and_every_bucket_is_validated(bucketed, fmt):
    manifest = read_manifest(bucketed[fmt])
    (g,) = manifest.graphs
    assert g.seq_buckets == BUCKETS and g.lengths == BUCKETS
    report = manifest.validation["graphs"][g.file]
    assert report["passed"] and report["parity"]["passed"]
    assert report["buckets"]["16"]["parity"]["passed"] and report["buckets"]["16"]["passed"]
    assert f"model.{fmt} @16" in manifest.validation["table"]


@pytest.mark.parametrize("backend", ["native", "onnx", "executorch"])
def test_a_short_batch_runs_in_the_small_bucket_with_the_full_lengths_loss(bucketed, backend):
    folder = bucketed["onnx" if backend == "onnx" else "pte"]
    graph = open_backend(folder, backend)
    theta = graph.initial_theta()
    theta = theta + np.random.default_rng(0).standard_normal(theta.shape).astype(np.float32) * 0.01
    short, long = encoded(folder, SHORT), encoded(folder, LONG)
    assert graph.length_for(short) == 16 and graph.length_for(long) == 32
    loss, logits = graph.run(short, theta)
    eager = open_backend(folder, "eager")  # the fp32 module at the full 32 positions: the same function
    ref_loss, ref_logits = eager.run(short, theta)
    assert abs(loss - ref_loss) < 1e-3 and np.abs(logits - ref_logits).max() < 1e-2  # int8 graph vs fp32 eager
    # and in the graph itself: the 16 bucket against the full 32 positions (the padding before them masked)
    full = graph._run(short, theta)
    assert abs(loss - full[0]) < 1e-5 and np.abs(logits - full[1]).max() < 1e-4
    assert graph.run(long, theta)[0] > 0


def test_a_static_graph_takes_only_its_length(tiny_artifacts):
    graph = open_backend(tiny_artifacts, "native")
    assert graph.lengths == (graph.seq_len,)
    batch = encoded(tiny_artifacts, (SHORT * graph.batch_size)[: graph.batch_size])
    with pytest.raises(Exception, match="set_input 0 failed"):
        graph._run(last_tokens(batch, graph.seq_len // 2), graph.initial_theta())


def test_bad_buckets_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ExportError, match="length buckets must lie in"):
        export_artifacts(tiny_model_dir, tmp_path, task=TaskSpec(), seq_len=SEQ, seq_buckets=(8, 64), progress=False)
    with pytest.raises(ExportError, match="length buckets must lie in"):
        export_artifacts(tiny_model_dir, tmp_path, task=TaskSpec(), seq_len=SEQ, seq_buckets=(1, 32), progress=False)


def test_bench_device_times_one_batch_in_each_bucket(bucketed):
    pte = bucketed["pte"]
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "bench", "device", "--max-tokens", "16", "--forwards", "2"]
    cmd += ["--zo-steps", "1", "--row", f"short={pte}:16", "--row", f"full={pte}:32", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout[out.stdout.index("[") :])
    assert [r["length"] for r in rows] == [16, 32]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], abs=1e-5)  # the same batch, padding masked
    bad = subprocess.run([*cmd[:-5], "--row", f"x={pte}:8"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "8 does not hold this batch" in bad.stdout


def corpus_of_lengths(lengths: np.ndarray) -> TokenizedCorpus:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32) % 500 + 1
    return TokenizedCorpus(ids, offsets, np.arange(len(lengths)) % 2, 64, 0)


def test_batches_by_length_keep_each_example_once_an_epoch_and_group_similar_lengths():
    lengths = np.random.default_rng(0).integers(4, 64, 1003)
    corpus = corpus_of_lengths(lengths)
    plain, grouped = BatchSchedule(corpus, 8, seed=3), BatchSchedule(corpus, 8, seed=3, by_length=True)
    epoch = [grouped.indices(t) for t in range(grouped.per_epoch)]
    seen = np.concatenate(epoch)
    assert len(seen) == len(set(seen.tolist())) == grouped.per_epoch * 8  # once each (the tail skipped, as plain)
    assert set(seen.tolist()) == set(np.concatenate([plain.indices(t) for t in range(plain.per_epoch)]).tolist())
    again = BatchSchedule(corpus, 8, seed=3, by_length=True)  # stateless: a resumed run draws the same batches
    assert all(np.array_equal(again.indices(t), epoch[t]) for t in (0, 57, grouped.per_epoch - 1))

    def spread(schedule):
        return np.mean([np.ptp(lengths[schedule.indices(t)]) for t in range(schedule.per_epoch)])

    assert spread(grouped) < spread(plain) / 5
    assert not np.array_equal(grouped.indices(grouped.per_epoch), epoch[0])  # a new epoch, new batches
