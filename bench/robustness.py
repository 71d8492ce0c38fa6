"""Compare the arms of bench/robustness.sh: each attacked run against the honest one — final accuracy on the same
test examples (difference, exact McNemar p) and how far the attack moved θ (‖θ_attacked − θ_honest‖ beside the
honest run's own distance from θ₀).

    python bench/robustness.py runs/robust
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from cooperllm.evaluate import paired_change
from cooperllm_app.simulation.metrics import evaluation_of, read_lines


def final_theta(run: Path, version: int) -> np.ndarray:
    tensors = load_file(run / "cloud" / "run1" / "adapters" / f"v{version:06d}.safetensors")
    return np.concatenate([tensors[k].reshape(-1).astype(np.float64) for k in sorted(tensors)])


def main() -> None:
    root = Path(sys.argv[1])
    rounds = json.loads((root / "none" / "config.json").read_text())["rounds"]
    final = {arm: evaluation_of(read_lines(root / arm / "metrics.jsonl")[-1]) for arm in ("none", "scalar", "flood")}
    theta0, honest = final_theta(root / "none", 0), final_theta(root / "none", rounds)
    print(
        f"honest: accuracy {final['none'].accuracy:.2%} on {final['none'].n_examples} test examples after {rounds} "
        f"rounds; ‖θ − θ₀‖ = {np.linalg.norm(honest - theta0):.4g}"
    )
    honest_acc = final["none"].accuracy
    for arm in ("scalar", "flood"):
        change = paired_change(final["none"], final[arm])
        moved = np.linalg.norm(final_theta(root / arm, rounds) - honest)
        print(
            f"{arm:>6}: accuracy {final[arm].accuracy:.2%} ({100 * (final[arm].accuracy - honest_acc):+.2f} pp, "
            f"McNemar p = {change.p_value:.3g}); ‖θ − θ_honest‖ = {moved:.4g}"
        )


if __name__ == "__main__":
    main()
