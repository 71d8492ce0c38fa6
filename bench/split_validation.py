"""Carve a validation split out of the devices' training data, for choosing hyper-parameters without the test set.

    python bench/split_validation.py --out runs/exp/data [--n 872] [--seed 0]

writes OUT/devices.tsv (what the simulated devices partition among themselves) and OUT/val.tsv (N rows drawn at
random from ../shared/data/sst2/train.tsv, never seen by a device). Every tuning run scores on val.tsv; only the
final runs score on test.tsv. Idempotent: the same seed gives the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=str(SHARED / "train.tsv"))
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=872, help="validation rows (default: as many as the test set)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    lines = Path(args.train).read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    if not 0 < args.n < len(rows):
        raise SystemExit(f"--n must be in (0, {len(rows)}), got {args.n}")
    held = set(np.random.default_rng(args.seed).choice(len(rows), size=args.n, replace=False).tolist())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("val.tsv", True), ("devices.tsv", False)):
        text = "\n".join([header] + [r for i, r in enumerate(rows) if (i in held) == keep]) + "\n"
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # runs may be reading it: write once
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    print(f"{out}/devices.tsv: {len(rows) - args.n} rows; {out}/val.tsv: {args.n} rows (seed {args.seed})")


if __name__ == "__main__":
    main()
