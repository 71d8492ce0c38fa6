"""``cooperllm simulate``: a federated run on this machine with the real cloud and N real device clients."""

from __future__ import annotations

import argparse
import signal
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="federated simulation: the real cloud service and N device clients, per-round metrics (resumable)",
        description="Start the cloud service (uvicorn on 127.0.0.1, SQLite in RUN_DIR) and N simulated devices, "
        "each on its own shard of the training data, running the real device client over an emulated link. Per "
        "round, K devices (seeded draw) run one round; the global θ is then scored on the test file, and one JSON "
        "line goes to RUN_DIR/metrics.jsonl (test accuracy and loss, bytes up/down per device, wall-clock, device "
        "peak RSS, λ, guidance bits). Run it again with the same RUN_DIR to continue a killed run.",
    )
    add_simulation_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-round lines stay)")
    p.set_defaults(func=run)


def add_simulation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", required=True, help="exported artifact folder (cooperllm export)")
    p.add_argument("--out", required=True, help="run folder: config, cloud database, device states, metrics")
    p.add_argument("--clients", type=int, default=20, help="simulated devices N (default 20)")
    p.add_argument("--per-round", type=int, default=5, help="devices per round K (default 5); the round's quorum")
    p.add_argument("--rounds", type=int, default=10, help="federated rounds R (default 10)")
    p.add_argument("--strategy", choices=["zgr", "zo", "bp"], default="zgr", help="zgr (ours), zo or bp (default zgr)")
    p.add_argument("--partition", default="iid", help="iid or dirichlet:BETA label skew (default iid)")
    p.add_argument("--link", default="10mbit:50ms", help="emulated device link RATE[/UP][:LAT[:JITTER[:LOSS]]]")
    p.add_argument("--backend", choices=["onnx", "native", "executorch", "eager"], help="device graph backend")
    p.add_argument("--model", help="HF model folder the artifacts came from (default: the manifest's, smollm2)")
    p.add_argument("--seed", type=int, default=0, help="seed of partition, device draw, perturbations (default 0)")
    p.add_argument("--train-data", default="", help="devices' private data (default ../shared/data/sst2/train.tsv)")
    p.add_argument("--public-data", default="", help="cloud's public data (default ../shared/data/sst2/dev.tsv)")
    p.add_argument("--public-n", type=int, default=2000, help="public examples the cloud samples (default 2000)")
    p.add_argument(
        "--public-classes", help="shifted public data: keep only these classes, e.g. '1' (default: all classes)"
    )
    p.add_argument("--test-data", default="", help="evaluation data (default ../shared/data/sst2/test.tsv)")
    p.add_argument("--eval-limit", type=int, help="score on the first N test examples only")
    p.add_argument("--eval-every", type=int, default=1, help="score θ every N rounds and after the last (default 1)")
    p.add_argument("--local-steps", type=int, default=1, help="steps per device per round (default 1)")
    p.add_argument("--blocks", default="each", help="each (a report per block), all (one over θ), or 0,3,5")
    p.add_argument("--epsilon", type=float, default=1e-3, help="ZO perturbation scale ε (default 1e-3)")
    p.add_argument("--alpha", type=float, default=0.5, help="isotropic share α of the guided perturbation")
    p.add_argument("--lam", default=0.5, help="mixing weight λ, or 'auto' for the online λ* (default 0.5)")
    p.add_argument("--lam-max", type=float, default=0.9, help="upper clip of the online λ* (default 0.9)")
    p.add_argument("--eta", type=float, help="server learning rate η (default 1e-3; bp: 1, FedAvg of Δθ)")
    p.add_argument("--rank", dest="guidance_rank", type=int, default=4, help="guidance subspace rank m (default 4)")
    p.add_argument("--window", type=int, default=8, help="cloud gradients kept per block (default 8)")
    p.add_argument("--grad-batches", type=int, default=2, help="cloud backward passes per round (default 2)")
    p.add_argument("--grad-batch-size", type=int, default=8, help="public examples per backward pass (default 8)")
    p.add_argument("--local-lr", type=float, help="device learning rate (default 0 for ZO; bp: AdamW 1e-3)")
    p.add_argument("--guidance-codec", choices=["dtc", "plain"], default="dtc", help="dtc (default) or plain f32")
    p.add_argument(
        "--deadline", dest="deadline_s", type=float, default=21600.0, help="round deadline, s (a safety net; 6 h)"
    )
    p.add_argument("--workers", type=int, help="device worker processes (default min(K, CPU cores))")


def config_from_args(args: argparse.Namespace, command: str):
    from cooperllm_app.simulation.config import SimConfig

    classes = None
    if args.public_classes:
        try:
            classes = [int(c) for c in args.public_classes.split(",") if c.strip()]
        except ValueError:
            raise ValueError(
                f"--public-classes takes class indices like '1' or '0,1', got {args.public_classes!r}"
            ) from None
    lam: float | str = args.lam
    if lam != "auto":
        try:
            lam = float(lam)
        except ValueError:
            raise ValueError(f"--lam takes a number in [0, 1] or 'auto', got {args.lam!r}") from None
    return SimConfig(
        artifacts=args.artifacts,
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        strategy=args.strategy,
        partition=args.partition,
        link=args.link,
        backend=args.backend,
        model=args.model,
        seed=args.seed,
        train_data=args.train_data,
        public_data=args.public_data,
        public_n=args.public_n,
        public_classes=classes,
        test_data=args.test_data,
        eval_limit=args.eval_limit,
        eval_every=args.eval_every,
        local_steps=args.local_steps,
        blocks=args.blocks,
        epsilon=args.epsilon,
        alpha=args.alpha,
        lam=lam,
        lam_max=args.lam_max,
        eta=args.eta,
        guidance_rank=args.guidance_rank,
        window=args.window,
        grad_batches=args.grad_batches,
        grad_batch_size=args.grad_batch_size,
        local_lr=args.local_lr,
        guidance_codec=args.guidance_codec,
        deadline_s=args.deadline_s,
        workers=args.workers,
        command=command,
    )


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the cloud and the workers are stopped, not just orphaned."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def run(args: argparse.Namespace) -> int:
    from cooperllm_app.simulation.launcher import SimulationError
    from cooperllm_app.simulation.metrics import fmt_bytes
    from cooperllm_app.simulation.runner import simulate

    stop_on_sigterm()
    cfg = config_from_args(args, "")
    try:
        result = simulate(cfg, args.out, progress=not args.no_progress)
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    last = result.rounds[-1] if result.rounds else None
    base = result.baseline
    if base and last and last.get("accuracy") is not None:
        print(
            f"accuracy {base['accuracy'] * 100:.2f} % -> {last['accuracy'] * 100:.2f} % after {len(result.rounds)} "
            f"rounds ({last['wall_s']:.0f} s of rounds); {fmt_bytes(last['cum_bytes'])} over the links in all"
        )
    print(f"metrics: {result.run_dir}/metrics.jsonl")
    return 0
