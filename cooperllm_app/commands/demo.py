"""``cooperllm demo``: the main job end to end on the embedded defaults (SmolLM2-135M-Instruct, SST-2).

1. export the default model for sequence classification (a new head on the last token, trained with the LoRA
   adapters: it starts at chance, so what training does is visible) as an int8 ``.pte`` once: an existing, verified
   export with the same settings is reused;
2. a federated ZGR run on this machine (``cooperllm simulate``): the cloud service, a few devices running the real
   device client on their shards of SST-2 train, a few rounds;
3. accuracy on the whole SST-2 test set (872 held-out examples) before and after, with the exact McNemar test of the
   paired predictions — the demo's claim is a gain, and it says whether the gain is significant — and the devices'
   peak memory and the bytes they sent and received.

Sized to finish in under 12 minutes on 2 CPU cores from an empty artifacts folder. Re-running it reuses the export
and the finished run (``--fresh`` starts the run over).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from cooperllm.config_fields import add_config_options
from cooperllm.console import fail
from cooperllm.evaluate import paired_change
from cooperllm.manifest import ManifestError, read_manifest
from cooperllm.models import DEFAULT_MODEL
from cooperllm.strategies import get_strategy
from cooperllm.tasks import TaskSpec
from cooperllm_app.commands.simulate import stop_on_sigterm
from cooperllm_app.simulation.config import SimConfig, command_line
from cooperllm_app.simulation.metrics import evaluation_of, fmt_bytes, mean_of
from cooperllm_app.simulation.runner import ADAPTER_FILE, simulate
from exporters import export_artifacts
from exporters.api import resolve_backend

# The demo's own choices, sized to finish in under 12 minutes on 2 CPU cores; every other setting is the simulation's
# default (SimConfig, RunConfig). DEMO_OPTIONS are the ones a user may change on the command line.
DEMO_OPTIONS = ("clients", "per_round", "rounds", "local_steps", "eta", "final_eval_limit")
DEMO_DEFAULTS = {
    "clients": 4,
    "per_round": 2,
    "rounds": 10,
    "local_steps": 1,  # one batch per device per round: a subspace and a complement measurement over all blocks
    "eta": get_strategy("zgr").default_eta,  # the zgr default, shown in the command line the demo prints
    "final_eval_limit": None,  # θ₀ and the last round scored on the whole SST-2 test set
    "eval_every": 10_000,  # no scoring in between: the demo's figures are before and after
    "strategy": "zgr",
    "blocks": "all",  # one report over all of θ per step
}
DEMO_TASK = TaskSpec(mode="seq-cls", label_words=())  # a head: no label words (what `export --task seq-cls` writes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job end to end: export SmolLM2, start the cloud, run a few devices for a few rounds",
        description="Export SmolLM2-135M-Instruct (int8 .pte, reused when present), start the embedded cloud, run "
        "a small federated ZGR fine-tuning of SST-2 with simulated devices, and print accuracy before/after, "
        "device memory and bytes on the links.",
    )
    p.add_argument(
        "--artifacts",
        default="artifacts/demo-smollm2-seq-cls",
        help="export folder (default artifacts/demo-smollm2-seq-cls)",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    add_config_options(p, SimConfig, DEMO_OPTIONS, defaults=DEMO_DEFAULTS)
    p.add_argument("--fresh", action="store_true", help="delete the run folder and run again")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def ensure_export(folder: Path, progress: bool) -> tuple[float, bool]:
    """The default export in ``folder``: reused when its manifest verifies and matches, else (re)built.
    Returns (seconds, reused)."""

    t0 = time.perf_counter()
    task = DEMO_TASK
    try:
        m = read_manifest(folder, verify_hashes=True)
        same = m.model_name == DEFAULT_MODEL and m.task == task and m.quantization.get("scheme") == "int8"
        if same and [(g.format, g.batch_size, g.seq_len) for g in m.graphs] == [("pte", 8, 64)]:
            return time.perf_counter() - t0, True
    except (ManifestError, FileNotFoundError, ValueError):
        pass
    export_artifacts(
        DEFAULT_MODEL,
        folder,
        task=task,
        formats=("pte",),
        backend=resolve_backend("auto", ["pte"], "int8"),
        quant="int8",
        progress=progress,
    )
    return time.perf_counter() - t0, False


def demo_config(args: argparse.Namespace) -> SimConfig:
    """The simulation the demo runs: its own choices, the options given, the simulation's defaults for the rest."""
    chosen = {**DEMO_DEFAULTS, **{name: getattr(args, name) for name in DEMO_OPTIONS}}
    return SimConfig(artifacts=args.artifacts, **chosen)


def run(args: argparse.Namespace) -> int:

    stop_on_sigterm()
    t_start = time.perf_counter()
    print("CooperLLM demo: federated ZGR fine-tuning of SmolLM2-135M-Instruct on SST-2 (seq-cls: a new head + LoRA)")
    print(f"1/3 export int8 .pte to {args.artifacts} (reused when present)")
    export_s, reused = ensure_export(Path(args.artifacts), not args.no_progress)
    print(f"    {'reused the existing export' if reused else 'exported'} in {export_s:.0f} s")
    cfg = demo_config(args)
    if args.fresh and Path(args.out).exists():
        shutil.rmtree(args.out)
    print(
        f"2/3 simulate: {cfg.clients} devices, {cfg.per_round} per round, {cfg.rounds} rounds, {cfg.local_steps} ZO "
        f"step(s) per device per round (a subspace and a complement measurement over all blocks), link {cfg.link}, "
        f"η {cfg.eta}, λ {cfg.lam}; scored on "
        + ("all SST-2 test examples" if cfg.final_eval_limit is None else f"the first {cfg.final_eval_limit}")
    )
    print(f"    {command_line(cfg, args.out)}")
    t_sim = time.perf_counter()
    try:
        result = simulate(cfg, args.out, progress=not args.no_progress)
    except ValueError as exc:
        if "holds another simulation" not in str(exc):
            raise
        return fail(f"{exc}\n`cooperllm demo --fresh` starts the demo's run over", 2)
    sim_s = time.perf_counter() - t_sim
    rounds, base = result.rounds, result.baseline
    last = rounds[-1]
    rss = max(m["device_peak_rss_mb"] for m in rounds if m["device_peak_rss_mb"] is not None)
    up = mean_of([m["bytes_up_mean"] for m in rounds])
    down = mean_of([m["bytes_down_mean"] for m in rounds])
    if result.ran == 0:
        print(f"    {args.out} holds this finished run: shown as recorded (--fresh runs it again)")
    print("3/3 results")
    change = paired_change(evaluation_of(base), evaluation_of(last))
    verdict = "significant" if change.p_value < 0.05 else "not significant"
    print(f"    accuracy before  {base['accuracy'] * 100:.2f} %  (loss {base['loss']:.4f}, {base['n_eval']} examples)")
    print(f"    accuracy after   {last['accuracy'] * 100:.2f} %  (loss {last['loss']:.4f}) after {len(rounds)} rounds")
    print(
        f"    paired test      {change.gained} predictions turned right, {change.lost} turned wrong: exact McNemar "
        f"p = {change.p_value:.2g} ({verdict} at 0.05)"
    )
    print(f"    device peak RSS  {rss:.0f} MB (torch-free device process: {not last['device_torch']})")
    print(f"    per device/round {fmt_bytes(up)} up, {fmt_bytes(down)} down; {fmt_bytes(last['cum_bytes'])} in all")
    print(f"    rounds           {last['wall_s']:.0f} s of rounds; simulation {sim_s:.0f} s with start-up and scoring")
    print(f"    total            {time.perf_counter() - t_start:.0f} s; metrics in {result.run_dir}/metrics.jsonl")
    print(f"    figures: cooperllm report {args.out}")
    adapter = Path(result.run_dir) / ADAPTER_FILE
    print(f"    the fine-tuned adapter is {adapter}; classify with it:")
    print(f'    cooperllm predict --artifacts {args.artifacts} --adapter {adapter} "a gripping, finely acted film"')
    return 0
