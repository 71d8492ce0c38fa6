"""Simulation runs as ``cooperllm report`` reads them: a run folder's config and rounds, the rectifier's series, and
the summary table (the figures: :mod:`cooperllm_app.simulation.figures`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from cooperllm_app.simulation.config import CONFIG_FILE
from cooperllm_app.simulation.metrics import METRICS_FILE, fmt_bytes, mean_of, read_lines

log = logging.getLogger(__name__)

# (file name, x label, how a metrics line gives x): the baseline sits at x = 0 on every axis
AXES = (
    ("accuracy_vs_rounds.png", "rounds", lambda m: m["round"] + 1),
    ("accuracy_vs_wallclock.png", "wall-clock of the rounds (s)", lambda m: m["wall_s"]),
    ("accuracy_vs_bytes.png", "bytes over all device links (MB)", lambda m: m["cum_bytes"] / 1e6),
)


@dataclass
class Run:
    label: str
    folder: Path
    config: dict
    baseline: dict | None
    rounds: list[dict]
    task: str

    def peak_rss(self) -> float | None:
        """The highest device peak RSS any round recorded (MB)."""
        rss = [m["device_peak_rss_mb"] for m in self.rounds if m.get("device_peak_rss_mb") is not None]
        return max(rss) if rss else None

    def up_to(self, rounds: int) -> Run:
        """This run as it stood after ``rounds`` rounds: runs of different lengths compared at the same budget."""
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        return replace(self, rounds=[m for m in self.rounds if m["round"] < rounds])

    def points(self, x_of) -> list[tuple[int, float, float]]:
        """(round, x, accuracy %) of every evaluated point: the baseline as round −1 at x = 0, then each scored
        round at ``x_of`` of its metrics line."""
        pts = [(-1, 0.0, self.baseline["accuracy"] * 100)] if self.baseline else []
        pts += [(m["round"], float(x_of(m)), m["accuracy"] * 100) for m in self.rounds if m.get("accuracy") is not None]
        return pts


def load_run(folder: str | Path, label: str | None = None) -> Run:
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: not a simulation run folder (no {CONFIG_FILE})")
    config = json.loads(cfg_path.read_text())
    lines = read_lines(folder / METRICS_FILE)
    rounds = sorted((m for m in lines if m.get("kind") == "round"), key=lambda m: m["round"])
    baseline = next((m for m in lines if m.get("kind") == "baseline"), None)
    task = "?"
    try:
        task = json.loads((Path(config["artifacts"]) / "manifest.json").read_text())["task"]["mode"]
    except (OSError, KeyError, ValueError):
        log.warning("%s: cannot read the task mode from the artifacts' manifest", folder)
    return Run(label or folder.name, folder, config, baseline, rounds, task)


def rectifier_series(run: Run) -> dict[str, tuple[list[int], list[float]]]:
    """Per round, the mean over blocks and directions of λ, b_k², s_k²/N and τ_k², and the axis test's b_∥², s_∥²,
    τ_∥² and ω (the rectifier's inputs; docs/PERTURBATIONS.md §4). Metrics of protocol-2 runs before the axis test
    published the blocks at the top level; both shapes are read."""
    keys = ("lam", "bias_sq", "device_se2", "cloud_var", "axis_bias_sq", "axis_device_se2", "axis_cloud_var", "keep")
    out: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in keys}

    def add(key: str, rnd: int, values: list[float]) -> None:
        if values:
            out[key][0].append(rnd + 1)
            out[key][1].append(sum(values) / len(values))

    for m in run.rounds:
        stats = m.get("rectifier") or {}
        by_block = stats.get("blocks", stats)
        blocks = [b for b in by_block.values() if b.get("n")]  # where the devices measured something
        add("lam", m["round"], [x for b in by_block.values() for x in b["lam"]])
        add("bias_sq", m["round"], [x for b in blocks for x in b["bias_sq"]])
        add("device_se2", m["round"], [x / b["n"] for b in blocks for x in b["device_var"]])
        add("cloud_var", m["round"], [x for b in blocks for x in b["cloud_var"]])
        axis = stats.get("axis") if "blocks" in stats else None
        if axis:
            for key in ("bias_sq", "device_se2", "cloud_var"):
                add(f"axis_{key}", m["round"], [axis[key]])
            add("keep", m["round"], [axis["keep"]])
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.2f}"


def summary_row(run: Run) -> dict[str, str]:
    c, rounds = run.config, run.rounds
    scored = [m for m in rounds if m.get("accuracy") is not None]
    last = rounds[-1] if rounds else None
    lams = [m["lam"] for m in rounds if m.get("lam") is not None]
    bits = [m["guidance_bits"] for m in rounds if m.get("guidance_bits") is not None]
    rss = run.peak_rss()
    return {
        "run": run.label,
        "strategy": c["strategy"],
        "task": run.task,
        "devices N/K": f"{c['clients']}/{c['per_round']}",
        "partition": c["partition"],
        "rounds": f"{len(rounds)}/{c['rounds']}",
        "acc before %": _pct(run.baseline["accuracy"] if run.baseline else None),
        "acc final %": _pct(scored[-1]["accuracy"] if scored else None),
        "acc best %": _pct(max(m["accuracy"] for m in scored) if scored else None),
        "loss final": "–" if not scored or scored[-1].get("loss") is None else f"{scored[-1]['loss']:.4f}",
        "wall-clock s": "–" if last is None else f"{last['wall_s']:.0f}",
        "up/device/round": fmt_bytes(mean_of([m["bytes_up_mean"] for m in rounds])),
        "down/device/round": fmt_bytes(mean_of([m["bytes_down_mean"] for m in rounds])),
        "bytes total": "–" if last is None else fmt_bytes(last["cum_bytes"]),
        "device peak RSS MB": "–" if rss is None else f"{rss:.0f}",
        "mean λ": "–" if not lams else f"{mean_of(lams):.3f}",
        "guidance bits/value": "–" if not bits else f"{mean_of(bits):.2f}",
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)
