"""``cooperllm bench memory``: peak resident memory of fresh processes fine-tuning the same model on the same batches.

(a) backprop LoRA in eager PyTorch fp32 with AdamW — the baseline a user would otherwise run;
(a') memory-lean backprop LoRA: frozen weights int8 (the exporter's weight-only modules, dequantized per call),
    activation recomputation (gradient checkpointing) and SGD (no optimizer state) — the comparison a sceptical reader
    asks for (MeSP-style). Its peak is counted from its first training step: loading the fp32 checkpoint and
    quantizing it is setup a lean system would do offline (the exporter does), so the high-water mark is reset after it;
(b) MeZO in eager PyTorch fp32 — the ZO reference;
(c) the device's ZO loop on the exported artifact over each backend (ONNX Runtime: torch-free; ExecuTorch: its
    Python runtime, which loads libtorch until the native runner replaces it).
Each configuration runs in its own process (``python -m cooperllm_app.bench.memory WORKER``) and reports its peak
resident set (VmHWM of its own address space); the parent prints each peak and the reduction against (a).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from cooperllm.data import load_dataset, shared_data_dir
from cooperllm.manifest import read_manifest
from cooperllm.models import load_causal_lm, resolve_model
from cooperllm.rusage import maxrss_mb
from cooperllm.tokenization import PromptEncoder
from device_runtime.batches import BatchSchedule
from device_runtime.budget import peak_rss_mb
from device_runtime.corpus import CorpusSource
from device_runtime.engine import ZOConfig, ZOEngine
from device_runtime.session import open_session

log = logging.getLogger(__name__)

WORKERS = {
    "bp-adamw": "(a) backprop LoRA, eager fp32, AdamW",
    "bp-lean": "(a') backprop LoRA, int8 frozen, recompute, SGD",
    "mezo-eager": "(b) MeZO, eager fp32",
    "zo-onnx": "(c) device ZO loop, ONNX Runtime",
    "zo-native": "(c) device ZO loop, ExecuTorch native runner",
    "zo-executorch": "(c') device ZO loop, ExecuTorch Python runtime",
}


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "memory",
        help="peak RSS: backprop-AdamW vs MeZO eager vs the device ZO loop on the artifact",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--artifacts", required=True, help="exported artifact folder (e.g. SmolLM2 int8, onnx and/or pte)")
    p.add_argument("--model", help="HF model for the eager runs (default: the manifest's model, e.g. smollm2)")
    p.add_argument("--data", help="training data (default ../shared/data/sst2/train.tsv)")
    p.add_argument("--steps", type=int, default=3, help="training steps per process (default 3)")
    p.add_argument(
        "--workers",
        default=",".join(WORKERS),
        help=f"comma-separated subset of {','.join(WORKERS)} (default all; the graph ones need that graph)",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per process (default 900)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run)


def _spawn(worker: str, cfg: dict, timeout: float) -> dict:
    """Run one worker in a fresh process; it reports its own peak RSS (VmHWM) on its last stdout line."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, "-m", "cooperllm_app.bench.memory", worker, json.dumps(cfg)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result = json.loads(stdout.strip().splitlines()[-1])
    # The worker's own VmHWM is the figure: wait4's ru_maxrss also counts the pre-exec high-water mark, i.e. this
    # (torch-loaded) parent's peak when the child was spawned; it is kept for reference only.
    result["rusage_maxrss_mb"] = round(maxrss_mb(usage), 1)
    result["wall_s"] = round(wall, 1)
    return result


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.artifacts, verify_hashes=True)
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    unknown = [w for w in workers if w not in WORKERS]
    if unknown:
        raise ValueError(f"unknown workers {unknown}; choose from {','.join(WORKERS)}")
    formats = {g.format for g in manifest.graphs}
    cfg = {
        "artifacts": str(args.artifacts),
        "model": args.model or manifest.model_name,
        "data": args.data or str(shared_data_dir() / "sst2" / "train.tsv"),
        "steps": args.steps,
    }
    g = manifest.graphs[0]
    print(
        f"model {cfg['model']}  task {manifest.task.mode}  batch {g.batch_size}×{g.seq_len}  steps {args.steps}  "
        f"artifact quantization {manifest.quantization.get('scheme', manifest.quantization)}",
        file=sys.stderr,
    )
    rows = []
    cache = tempfile.TemporaryDirectory(prefix="cooperllm-bench-corpus-")
    cfg["cache"] = cache.name
    for w in workers:
        need = {"zo-onnx": "onnx", "zo-native": "pte", "zo-executorch": "pte"}.get(w)
        if need and need not in formats:
            rows.append({"worker": w, "error": f"artifact has no {need} graph"})
            continue
        print(f"running {w} ...", file=sys.stderr, flush=True)
        rows.append({"worker": w, **_spawn(w, cfg, args.timeout)})
    cache.cleanup()
    base = next((r["peak_rss_mb"] for r in rows if r["worker"] == "bp-adamw" and "peak_rss_mb" in r), None)
    lean = next((r["peak_rss_mb"] for r in rows if r["worker"] == "bp-lean" and "peak_rss_mb" in r), None)
    for r in rows:
        if base and "peak_rss_mb" in r:
            r["fraction_of_baseline"] = round(r["peak_rss_mb"] / base, 4)
            r["reduction_pct"] = round(100 * (1 - r["peak_rss_mb"] / base), 1)
        if lean and "peak_rss_mb" in r:
            r["fraction_of_lean"] = round(r["peak_rss_mb"] / lean, 4)
    if args.json:
        print(json.dumps(rows))
        return 0
    columns = f"{'peak RSS':>10} {'vs (a)':>8} {'reduction':>10} {'vs (a´)':>8} {'s/step':>8} {'torch':>6}"
    print(f"{'configuration':<48} {columns}")
    for r in rows:
        label = WORKERS[r["worker"]]
        if "error" in r:
            print(f"{label:<48} {'failed: ' + r['error']}")
            continue
        frac = f"{100 * r['fraction_of_baseline']:.1f} %" if "fraction_of_baseline" in r else "-"
        red = f"{r['reduction_pct']:.1f} %" if "reduction_pct" in r else "-"
        vs_lean = f"{100 * r['fraction_of_lean']:.1f} %" if "fraction_of_lean" in r else "-"
        print(
            f"{label:<48} {r['peak_rss_mb']:>7.0f} MB {frac:>8} {red:>10} {vs_lean:>8} {r['seconds_per_step']:>8.2f} "
            f"{'yes' if r['torch_loaded'] else 'no':>6}"
        )
    child = max((r.get("child_peak_mb", 0) for r in rows), default=0)
    if child:
        print(f"(c) tokenizes its data in a child process that exits before the graph loads (largest: {child:.0f} MB)")
    return 0


# --- workers (each runs in a fresh process) --------------------------------------------------------------------


def _eager_setup(cfg: dict, manifest, mmap: bool = True):
    from cooperllm.modeling import build_task_model  # imports torch: only the eager workers load it

    g = manifest.graphs[0]
    model_dir = resolve_model(cfg["model"])
    encoder = PromptEncoder(model_dir / "tokenizer.json", manifest.task, g.seq_len)
    corpus = encoder.tokenize(load_dataset(cfg["data"], label_names=manifest.task.label_names))
    lm = load_causal_lm(model_dir, mmap=mmap)
    module, layout = build_task_model(lm, encoder, manifest.adapter)
    return module, layout, BatchSchedule(corpus, g.batch_size, 0), lm


def _worker_bp(cfg: dict, manifest) -> dict:
    import torch  # deferred: loads torch (heavy; not needed at import)

    module, _, schedule, _ = _eager_setup(cfg, manifest)
    params = [p for p in module.parameters() if p.requires_grad]
    return _backprop_loop(module, schedule, torch.optim.AdamW(params, lr=1e-3), cfg["steps"])


def _worker_bp_lean(cfg: dict, manifest) -> dict:
    import gc

    import torch  # deferred: loads torch (heavy; not needed at import)

    from exporters.quantize import quantize_frozen  # deferred: loads torch

    module, _, schedule, lm = _eager_setup(cfg, manifest, mmap=False)  # the fp32 weights must be freeable
    # the loss reads only the label rows it copied: the fp32 LM head (tied to the embedding, which keeps the whole
    # mmapped checkpoint resident) goes, as it does from the exported graph
    lm.set_output_embeddings(torch.nn.Identity())
    quantize_frozen(module, "int8")
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module.train()  # HF recomputes a layer's activations in backward only in training mode (no dropout here)
    gc.collect()
    reset_peak_rss()
    params = [p for p in module.parameters() if p.requires_grad]
    return _backprop_loop(module, schedule, torch.optim.SGD(params, lr=1e-3), cfg["steps"])


def reset_peak_rss() -> None:
    """Restart this process's VmHWM at its current RSS (Linux ``clear_refs`` 5), so setup is not counted.

    The fp32 weights freed by quantization go back to the system first (glibc keeps freed heap pages otherwise): a
    lean system loads the int8 weights directly and never holds them."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _backprop_loop(module, schedule, opt, steps: int) -> dict:
    import torch  # deferred: loads torch (heavy; not needed at import)

    times, loss = [], None
    for t in range(steps):
        b = schedule.batch(t)
        t0 = time.perf_counter()
        loss, _ = module(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask), torch.from_numpy(b.labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"seconds_per_step": sum(times[1:] or times) / len(times[1:] or times), "last_loss": float(loss)}


def _worker_mezo_eager(cfg: dict, manifest) -> dict:
    import torch  # deferred: loads torch (heavy; not needed at import)

    from cooperllm.modeling import theta_from_module, theta_to_tensors  # deferred: loads torch

    module, layout, schedule, _ = _eager_setup(cfg, manifest)
    theta = theta_from_module(module, layout)
    params = dict(module.named_parameters())
    with torch.no_grad():  # point the module's trainable parameters at θ's memory: perturbing θ perturbs the model
        for name, tensor in theta_to_tensors(theta, layout).items():
            params[name].data = tensor

    def run_fn(batch, th):
        with torch.inference_mode():
            loss, logits = module(
                torch.from_numpy(batch.input_ids),
                torch.from_numpy(batch.attention_mask),
                torch.from_numpy(batch.labels),
            )
        return float(loss), logits.numpy()

    return _zo_loop(ZOEngine(theta, layout, run_fn, ZOConfig(lr=1e-4, eps=1e-3)), schedule, cfg["steps"])


def _zo_loop(engine, schedule, steps: int) -> dict:
    times = []
    for t in range(steps):
        batch = schedule.batch(t)
        t0 = time.perf_counter()
        engine.update(engine.step(batch, t))
        times.append(time.perf_counter() - t0)
    return {"seconds_per_step": sum(times[1:] or times) / len(times[1:] or times), "last_loss": engine.last_loss}


def _worker_zo_graph(cfg: dict, backend: str) -> dict:
    # the corpus cache is private to this bench run: the first graph worker tokenizes in a child, the others reuse it
    data = {"train": CorpusSource(cfg["data"])}
    session = open_session(cfg["artifacts"], backend, data=data, corpus_cache=cfg["cache"])
    schedule = BatchSchedule(session.corpora["train"], session.backend.batch_size, 0)
    theta = session.backend.initial_theta()
    engine = ZOEngine(theta, session.manifest.layout, session.backend.run, ZOConfig(lr=1e-4, eps=1e-3))
    result = _zo_loop(engine, schedule, cfg["steps"])
    # the tokenizing child ran (and exited) before the graph was loaded; its peak is reported, not hidden
    result["child_peak_mb"] = round(maxrss_mb(resource.getrusage(resource.RUSAGE_CHILDREN)), 1)
    return result


def worker_main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    name, cfg = argv[0], json.loads(argv[1])
    manifest = read_manifest(cfg["artifacts"], verify_hashes=False)  # the parent verified it
    if name == "bp-adamw":
        result = _worker_bp(cfg, manifest)
    elif name == "bp-lean":
        result = _worker_bp_lean(cfg, manifest)
    elif name == "mezo-eager":
        result = _worker_mezo_eager(cfg, manifest)
    elif name == "zo-onnx":
        result = _worker_zo_graph(cfg, "onnx")
    elif name == "zo-native":
        result = _worker_zo_graph(cfg, "native")
    elif name == "zo-executorch":
        result = _worker_zo_graph(cfg, "executorch")
    else:
        raise SystemExit(f"unknown worker {name}")
    result.update(peak_rss_mb=round(peak_rss_mb(), 1), torch_loaded="torch" in sys.modules)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
