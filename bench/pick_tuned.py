"""Pick each strategy's value from the tuning runs of bench/experiments.sh: the best final validation accuracy
(ties: the lower final validation loss). Prints shell assignments TUNED_<strategy>=<value>.

    python bench/pick_tuned.py runs/exp/tune > runs/exp/tuned.env
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    best: dict[str, tuple[float, float, str]] = {}
    for folder in sorted(Path(sys.argv[1]).iterdir()):
        metrics = folder / "metrics.jsonl"
        if not metrics.is_file():
            continue
        rounds = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        scored = [m for m in rounds if m.get("kind") == "round" and m.get("accuracy") is not None]
        if not scored:
            continue
        strategy, _, value = folder.name.partition("@")
        last = scored[-1]
        key = (last["accuracy"], -last["loss"], value)
        print(f"# {folder.name}: val accuracy {last['accuracy']:.4f}, loss {last['loss']:.4f}", file=sys.stderr)
        if strategy not in best or key[:2] > best[strategy][:2]:
            best[strategy] = key
    for strategy, (acc, neg_loss, value) in sorted(best.items()):
        print(f"TUNED_{strategy}={value}  # val accuracy {acc:.4f}, loss {-neg_loss:.4f}")


if __name__ == "__main__":
    main()
