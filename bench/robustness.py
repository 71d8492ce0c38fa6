"""Compare the arms of bench/robustness.sh: each attacked run against the honest one of the same seed — final
accuracy on the same evaluation examples (difference, exact McNemar p), how far the attack moved θ (‖θ_attacked −
θ_honest‖ beside the honest run's own distance from θ₀), the largest single round's step ‖θ_{r+1} − θ_r‖ of each
arm (the per-round bound of docs/SECURITY.md §3) and each arm's mean λ (zgr's weight on the cloud's estimate).
Each attacked run is compared with two references: ``none``, five honest devices, and ``absent``, the same run with
device 0 drawn but silent and the rounds closed on the other four (``--attack absent``) — the difference to ``none``
is what losing a device's data costs plus what the attacker does, the difference to ``absent`` what the attacker does.
Given several seeds' folders, also the mean paired difference over seeds with its 95 % t-interval: the attack costs
at most 2 pp when the interval's lower end is above −2 pp.

    python bench/robustness.py runs/robust                         # one seed
    python bench/robustness.py runs/robust/seed0 runs/robust/seed1 runs/robust/seed2
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from scipy import stats

from cooperllm.evaluate import paired_change
from cooperllm_app.simulation.metrics import evaluation_of, read_lines

ATTACKS = ("scalar", "flood")
REFERENCES = ("none", "absent")  # five honest devices; four, device 0 silent


def theta_at(run: Path, version: int) -> np.ndarray:
    tensors = load_file(run / "cloud" / "run1" / "adapters" / f"v{version:06d}.safetensors")
    return np.concatenate([tensors[k].reshape(-1).astype(np.float64) for k in sorted(tensors)])


def largest_step(run: Path, rounds: int) -> float:
    thetas = [theta_at(run, v) for v in range(rounds + 1)]
    return max(float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(thetas))


def left_out(run: Path) -> int:
    """Reports the cloud left out of the run's rounds as beyond the robust bound (its log says each round's count)."""
    log = run / "logs" / "cloud.log"
    found = re.findall(r": (\d+) of \d+ reports left out", log.read_text()) if log.is_file() else []
    return sum(int(n) for n in found)


def rounds_done(run: Path) -> int:
    """Rounds with a metrics line: an arm still running is left out of the comparison."""
    return sum(1 for line in read_lines(run / "metrics.jsonl") if line.get("kind") == "round")


def mean_lam(run: Path) -> float:
    lams = [line["lam"] for line in read_lines(run / "metrics.jsonl") if line.get("lam") is not None]
    return float(np.mean(lams)) if lams else float("nan")


def compare_seed(root: Path) -> dict[tuple[str, str], float]:
    """Print one seed's comparison; returns each attacked arm's accuracy difference (pp) against each reference arm
    present, keyed (arm, reference)."""
    present = [arm for arm in (*REFERENCES, *ATTACKS) if (root / arm / "config.json").is_file()]
    if not present:
        return {}
    rounds = json.loads((root / present[0] / "config.json").read_text())["rounds"]
    final = {
        arm: evaluation_of(read_lines(root / arm / "metrics.jsonl")[-1])
        for arm in present
        if (root / arm / "metrics.jsonl").is_file() and rounds_done(root / arm) == rounds
    }
    print(f"{root}: {rounds} rounds, arms finished: {', '.join(final) or 'none yet'}")
    diffs = {}
    theta0 = theta_at(root / present[0], 0)
    for arm in (*REFERENCES, *ATTACKS):
        if final.get(arm) is None:
            continue
        moved0 = np.linalg.norm(theta_at(root / arm, rounds) - theta0)
        print(
            f"  {arm:>6}: accuracy {final[arm].accuracy:.2%}, loss {final[arm].loss:.4f} on {final[arm].n_examples} "
            f"examples; ‖θ − θ₀‖ = {moved0:.4g}; largest round {largest_step(root / arm, rounds):.4g}; "
            f"mean λ {mean_lam(root / arm):.3f}; {left_out(root / arm)} reports left out"
        )
        for ref in REFERENCES[: REFERENCES.index(arm)] if arm in REFERENCES else REFERENCES:
            if final.get(ref) is None:
                continue
            change = paired_change(final[ref], final[arm])
            moved = np.linalg.norm(theta_at(root / arm, rounds) - theta_at(root / ref, rounds))
            diffs[arm, ref] = 100 * (final[arm].accuracy - final[ref].accuracy)
            print(
                f"          vs {ref:>6}: {diffs[arm, ref]:+.2f} pp (McNemar p = {change.p_value:.3g}); "
                f"‖θ − θ_{ref}‖ = {moved:.4g}"
            )
    return diffs


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]]
    if not roots:
        sys.exit("usage: python bench/robustness.py RUN_ROOT [RUN_ROOT …] (one bench/robustness.sh output per seed)")
    per_seed = [compare_seed(root) for root in roots]
    if len(per_seed) < 2:
        return
    for key in sorted({k for seed in per_seed for k in seed}):
        d = np.array([seed[key] for seed in per_seed if key in seed])
        if len(d) < 2:
            continue
        per_seed_text = ", ".join(f"{x:+.2f}" for x in d)
        if d.std(ddof=1) == 0.0:  # no spread: no interval to draw (and t is undefined)
            print(f"{key[0]:>6} vs {key[1]:>6} over {len(d)} seeds: {d[0]:+.2f} pp in every seed ({per_seed_text})")
            continue
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        p = stats.ttest_1samp(d, 0.0).pvalue
        low, high = d.mean() - half, d.mean() + half
        print(
            f"{key[0]:>6} vs {key[1]:>6} over {len(d)} seeds: {d.mean():+.2f} pp (95 % CI {low:+.2f} to {high:+.2f}; "
            f"paired t p = {p:.3g}); per seed {per_seed_text}"
        )


if __name__ == "__main__":
    main()
