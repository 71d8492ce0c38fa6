"""One measurement in a fresh process, printed as one JSON line:
``python -m cooperllm_app.bench.export_child MODE ...``.

``run FOLDER FILE REPEATS`` loads one artifact with its runtime and times forward calls (no torch for .onnx; the
ExecuTorch Python runtime imports libtorch). ``eager MODEL FOLDER REPEATS`` is the eager PyTorch fp32 baseline.
``export JSON`` runs one ``export_artifacts`` call. Peak RSS is this process's own ``ru_maxrss``.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from cooperllm.adapter import AdapterSpec
from cooperllm.checkpoint import initial_theta
from cooperllm.manifest import read_manifest
from cooperllm.models import load_causal_lm, resolve_model
from cooperllm.rusage import maxrss_mb
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder
from exporters import export_artifacts
from exporters.inputs import graph_inputs, validation_batch
from exporters.runners import open_runner


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _inputs(folder: Path, graph_file: str):
    manifest = read_manifest(folder, verify_hashes=False)
    graph = next(g for g in manifest.graphs if g.file == graph_file)
    encoder = PromptEncoder(folder / manifest.tokenizer_file, manifest.task, graph.seq_len)
    batch = validation_batch(encoder, graph.batch_size)
    theta = initial_theta(folder, manifest)
    return manifest, graph, batch, graph_inputs(batch, theta, manifest.layout)


def _time_calls(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (XNNPACK packs weights, ORT allocates)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def run_artifact(folder: Path, graph_file: str, repeats: int) -> dict:
    manifest, graph, _, inputs = _inputs(folder, graph_file)
    rss_before = maxrss_mb()
    t0 = time.perf_counter()

    runner = open_runner(folder / graph_file, graph.format)
    load_s = time.perf_counter() - t0
    forward_ms, (loss, _) = _time_calls(lambda: runner(inputs), repeats)
    return {
        "file": graph_file,
        "load_s": load_s,
        "forward_ms": forward_ms,
        "loss": loss,
        "peak_rss_mb": maxrss_mb(),
        "rss_before_load_mb": rss_before,
        "torch_imported": "torch" in sys.modules,
    }


def run_eager(model: str, folder: Path, repeats: int) -> dict:
    manifest, graph, batch, _ = _inputs(folder, json.loads((folder / "manifest.json").read_text())["graphs"][0]["file"])
    t0 = time.perf_counter()
    import torch  # deferred: loads torch (heavy; not needed at import)

    from cooperllm.modeling import build_task_model, theta_to_tensors  # deferred: loads torch

    encoder = PromptEncoder.for_artifacts(folder, manifest)
    module, layout = build_task_model(load_causal_lm(resolve_model(model)), encoder, manifest.adapter)
    params = theta_to_tensors(initial_theta(folder, manifest), layout)
    args = tuple(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.labels))
    load_s = time.perf_counter() - t0

    def forward():
        with torch.no_grad():
            return torch.func.functional_call(module, params, args)

    forward_ms, (loss, _) = _time_calls(forward, repeats)
    return {
        "file": "eager",
        "load_s": load_s,
        "forward_ms": forward_ms,
        "loss": float(loss),
        "peak_rss_mb": maxrss_mb(),
        "torch_imported": True,
    }


def run_export(request: dict) -> dict:

    t0 = time.perf_counter()
    manifest = export_artifacts(
        request["model"],
        request["out"],
        task=TaskSpec.from_dict(request["task"]),
        adapter=AdapterSpec.from_dict(request["adapter"]),
        formats=request["formats"],
        backend=request["backend"],
        quant=request["quant"],
        batch_size=request["batch_size"],
        seq_len=request["seq_len"],
        progress=False,
        force=True,
    )
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": _cpu_s(),
        "peak_rss_mb": maxrss_mb(),
        "passed": manifest.validation.get("passed"),
        "timings_s": manifest.validation.get("timings_s"),
    }


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "run":
        result = run_artifact(Path(argv[1]), argv[2], int(argv[3]))
    elif mode == "eager":
        result = run_eager(argv[1], Path(argv[2]), int(argv[3]))
    elif mode == "export":
        result = run_export(json.loads(argv[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
