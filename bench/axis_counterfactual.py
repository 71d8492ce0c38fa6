"""What λ the axis test would have set under other bias rules, from a run's published per-round numbers.

Reads each run's metrics.jsonl (the rectifier's ``axis`` block of every round that tested the cloud: the devices'
projection a_∥, its se², the cloud's slope κ and τ_∥²), replays the running bias test of ``cooperllm.rectify`` and
prints λ per tested round under:

- ``published``: λ as the run logged it;
- ``equal``: ``cooperllm.rectify.BiasTrack`` as the run used it (every round's a_∥ − κ weighed alike) — must
  reproduce ``published``, which checks the replay itself;
- ``precision``: each round weighed by 1/(se² + τ²) in the running mean (its variance Σw²v/(Σw)² as before);
- ``z2``: equal weights, a bias counted only beyond 2 standard errors of the running mean (BIAS_Z 2 instead of 1).

A counterfactual on the published numbers: after the first round where a variant's λ differs materially the model
would have moved differently, so later rounds show only the direction of the effect. A design probe, not a result.

    python bench/axis_counterfactual.py runs/exp/causal-lm-cls-S1-zgrfollow-s*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from cooperllm.rectify import BETA, BIAS_Z, HORIZON, BiasTrack


def _lam(axis: dict, bias_sq: float, lam_max: float) -> float:
    denom = axis["device_se2"] + HORIZON * bias_sq + axis["cloud_var"]
    return min(max(axis["device_se2"] / denom, 0.0), lam_max) if denom > 0 else lam_max


def _weighted(rounds: list[dict], lam_max: float, precision: bool, z: float) -> list[float]:
    weight = signed = noise = 0.0
    out = []
    for a in rounds:
        delta, var = a["device_proj"] - a["cloud_slope"], a["device_se2"] + a["cloud_var"]
        w = 1.0 / var if precision else 1.0
        weight, signed, noise = BETA * weight + w, BETA * signed + w * delta, BETA**2 * noise + w * w * var
        out.append(_lam(a, max((signed / weight) ** 2 - z * z * noise / weight**2, 0.0), lam_max))
    return out


def _equal(rounds: list[dict], lam_max: float) -> list[float]:
    track, out = BiasTrack(), []
    for a in rounds:
        track = track.updated(
            np.array([a["device_proj"] - a["cloud_slope"]]), np.array([a["device_se2"] + a["cloud_var"]])
        )
        out.append(_lam(a, float(track.bias_sq()[0]), lam_max))
    return out


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        lam_max = float(json.loads((folder / "config.json").read_text()).get("lam_max", 1.0))
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rounds = [
            m["rectifier"]["axis"] for m in lines if m.get("kind") == "round" and (m.get("rectifier") or {}).get("axis")
        ]
        if not rounds:
            print(f"{folder.name}: no axis test in its rounds")
            continue
        arms = {
            "published": [a["lam"] for a in rounds],
            "equal": _equal(rounds, lam_max),
            "precision": _weighted(rounds, lam_max, precision=True, z=BIAS_Z),
            "z2": _weighted(rounds, lam_max, precision=False, z=2.0),
        }
        gap = max(abs(p - e) for p, e in zip(arms["published"], arms["equal"], strict=True))
        print(f"{folder.name}: {len(rounds)} tested rounds (replay of the run's rule: max |Δλ| {gap:.1e})")
        for name, lams in arms.items():
            print(f"  {name:<9} mean {np.mean(lams):.3f} | " + " ".join(f"{x:.2f}" for x in lams))


if __name__ == "__main__":
    main()
