"""Hyper-parameter search for the federated seq-cls runs on a cheap surrogate: the head alone.

At θ₀ of the seq-cls task the LoRA B matrices and the head are zero, so the loss depends on the head only (every
LoRA gradient is zero until the head moves): the first rounds are logistic regression on SmolLM2's last hidden
states. This script caches those states once (eager PyTorch, a few hundred prompts of train, dev and test), then
replays the federated round structure of ``cooperllm simulate`` on them in numpy — K of N devices on Dirichlet
shards, two-point SPSA with Rademacher (+ guided) perturbations, the cloud's window of public-data gradients and its
top-m basis and the rectified update — for a grid of (η, λ, α) per strategy, a few seeds each. The guided
perturbation and the update follow ``cooperllm.perturb`` / ``cooperllm.zgr`` in float64 with numpy's generator
(not the portable one): the search needs their statistics, not bit-exact replay.

It is a surrogate: it leaves out the other 460k LoRA values, whose share of each SPSA scalar is extra noise on the
real graph, so it flatters zo more than zgr. Used to pick the settings of ``bench/experiments.sh``; the chosen
ones are then checked on the real system by short probes (docs/RESULTS.md).

    .venv/bin/python bench/head_surrogate.py [--cache runs/head-surrogate] [--rounds 15] [--seeds 3]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

SIZES = {"train": 640, "dev": 256, "test": 200}
EPS = 1e-3


def cache_features(cache: Path, seq_len: int = 64) -> None:
    """Centred last hidden states of the seq-cls prompts (as the exported head sees them at θ₀)."""
    import torch

    from cooperllm.adapter import AdapterSpec
    from cooperllm.data import load_dataset, shared_data_dir
    from cooperllm.modeling import build_task_model
    from cooperllm.models import load_causal_lm, resolve_model
    from cooperllm.tasks import SEQ_CLS, TaskSpec
    from cooperllm.tokenization import PromptEncoder

    model_dir = resolve_model("smollm2")
    encoder = PromptEncoder(model_dir / "tokenizer.json", TaskSpec(mode=SEQ_CLS), seq_len)
    module, _ = build_task_model(load_causal_lm(model_dir), encoder, AdapterSpec())
    rng = np.random.default_rng(0)
    cache.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        ds = load_dataset(shared_data_dir() / "sst2" / f"{split}.tsv")
        idx = np.arange(n) if split == "test" else rng.choice(len(ds), n, replace=False)
        feats = []
        with torch.inference_mode():
            for i in range(0, n, 16):
                rows = idx[i : i + 16]
                b = encoder.encode([ds.texts[j] for j in rows], ds.labels[rows])
                out = module.lm.base_model(
                    input_ids=torch.from_numpy(b.input_ids),
                    attention_mask=torch.from_numpy(b.attention_mask),
                    use_cache=False,
                )
                feats.append((out.last_hidden_state[:, -1, :] - module.head_center).numpy())
        np.savez(cache / f"{split}.npz", x=np.concatenate(feats).astype(np.float64), y=ds.labels[idx])


class HeadTask:
    def __init__(self, cache: Path):
        self.split = {s: np.load(cache / f"{s}.npz") for s in SIZES}
        self.dim = self.split["train"]["x"].shape[1]
        self.n = 2 * self.dim + 2  # score.weight (2 × hidden) and score.bias

    def loss(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._ce(theta, x, y)[0])

    def grad(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        _, d = self._ce(theta, x, y)
        return np.concatenate([(d.T @ x).ravel(), d.sum(0)])

    def _logits(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x @ theta[: 2 * self.dim].reshape(2, self.dim).T + theta[2 * self.dim :]

    def _ce(self, theta, x, y):
        z = self._logits(theta, x)
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        d = p.copy()
        d[np.arange(len(y)), y] -= 1
        return loss, d / len(y)

    def accuracy(self, theta: np.ndarray) -> float:
        x, y = self.split["test"]["x"], self.split["test"]["y"]
        return float((self._logits(theta, x).argmax(1) == y).mean())


def simulate(task: HeadTask, strategy: str, eta: float, lam: float, alpha: float, args, seed: int) -> list[float]:
    """Test accuracy after each round, as ``cooperllm simulate`` would run the head (blocks=all, batch 8)."""
    from cooperllm.data import partition_dirichlet
    from cooperllm.strategies import get_strategy

    rng = np.random.default_rng(seed)
    xt, yt = task.split["train"]["x"], task.split["train"]["y"]
    xp, yp = task.split["dev"]["x"], task.split["dev"]["y"]
    shards = partition_dirichlet(yt, args.clients, args.beta, seed)
    theta, window, accs = np.zeros(task.n), [], [task.accuracy(np.zeros(task.n))]
    guided = get_strategy(strategy).guided  # zgr: the cloud's subspace and the λ-mixed update
    for _ in range(args.rounds):
        basis = coeffs = None
        if guided:
            grads = [task.grad(theta, xp[r], yp[r]) for r in (rng.choice(len(yp), 8, replace=False) for _ in range(2))]
            window = (window + grads)[-args.window :]
            basis = np.linalg.svd(np.array(window).T, full_matrices=False)[0][:, : args.rank]
            coeffs = basis.T @ np.mean(grads, 0)
        g_z = np.zeros(task.n)
        reports = 0
        for d in rng.choice(args.clients, args.per_round, replace=False):
            for _ in range(args.local_steps):
                rows = rng.choice(shards[d], 8, replace=len(shards[d]) < 8)
                z = rng.choice([-1.0, 1.0], task.n)
                if basis is not None:
                    xi = rng.choice([-1.0, 1.0], basis.shape[1])
                    z = np.sqrt(alpha) * z + np.sqrt((1 - alpha) * task.n / basis.shape[1]) * (basis @ xi)
                x, y = xt[rows], yt[rows]
                p = (task.loss(theta + EPS * z, x, y) - task.loss(theta - EPS * z, x, y)) / (2 * EPS)
                g_z += p * z
                reports += 1
        g_z /= reports
        theta -= eta * ((1 - lam) * g_z + lam * (basis @ coeffs)) if guided else eta * g_z
        accs.append(task.accuracy(theta))
    return accs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default="runs/head-surrogate", help="feature cache folder (built on first use)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--beta", type=float, default=0.5, help="Dirichlet β of the device shards")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--window", type=int, default=8)
    args = p.parse_args()
    cache = Path(args.cache)
    if not all((cache / f"{s}.npz").is_file() for s in SIZES):
        cache_features(cache)
    task = HeadTask(cache)
    etas = (1e-4, 1e-3, 1e-2, 3e-2)
    grid = [("zo", e, 0.0, 1.0) for e in etas]
    grid += [("zgr", e, lam, a) for e, lam, a in itertools.product(etas, (0.5, 0.9), (0.5, 0.9, 0.99))]
    grid += [("cloud only", e, 1.0, 0.99) for e in (1e-2, 3e-2)]
    print(f"test accuracy (%) of the head after rounds 0, 5, 10, {args.rounds}; mean of {args.seeds} seeds\n")
    print("| strategy | η | λ | α | r0 | r5 | r10 | final |\n|---|---|---|---|---|---|---|---|")
    for name, eta, lam, alpha in grid:
        strategy = "zo" if name == "zo" else "zgr"
        acc = np.mean([simulate(task, strategy, eta, lam, alpha, args, s) for s in range(args.seeds)], axis=0) * 100
        marks = " | ".join(f"{acc[min(r, args.rounds)]:.1f}" for r in (0, 5, 10, args.rounds))
        print(f"| {name} | {eta:g} | {lam:g} | {alpha:g} | {marks} |", flush=True)


if __name__ == "__main__":
    main()
