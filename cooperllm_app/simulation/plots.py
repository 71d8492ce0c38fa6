"""Figures and the summary table of simulation runs (``cooperllm report``); matplotlib with the Agg backend."""

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

    def points(self, x_of) -> tuple[list[float], list[float]]:
        xs = [0.0] if self.baseline else []
        ys = [self.baseline["accuracy"] * 100] if self.baseline else []
        for m in self.rounds:
            if m.get("accuracy") is not None:
                xs.append(float(x_of(m)))
                ys.append(m["accuracy"] * 100)
        return xs, ys


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


def plot_runs(runs: list[Run], out_dir: Path) -> list[Path]:
    """One PNG per x axis (rounds, wall-clock, bytes), one line per run."""
    import matplotlib  # deferred: loads matplotlib (heavy; not needed at import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib (heavy; not needed at import)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, xlabel, x_of in AXES:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        series = [(run.label, *run.points(x_of)) for run in runs]
        ends = [xs[-1] for _, xs, _ in series if xs and xs[-1] > 0]
        log_x = name == "accuracy_vs_bytes.png" and ends and max(ends) > 30 * min(ends)  # e.g. bp vs ZO bytes
        for label, xs, ys in series:
            if log_x and xs and xs[0] == 0:  # the baseline (x = 0) has no place on a log axis
                xs, ys = xs[1:], ys[1:]
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    rectified = [run for run in runs if any(m.get("rectifier") for m in run.rounds)]
    if rectified:
        written.append(_plot_rectifier(plt, rectified, out_dir / "rectifier_vs_rounds.png"))
    return written


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


def _plot_rectifier(plt, runs: list[Run], path: Path) -> Path:
    """λ (mean over blocks and directions) and the three terms it is made of (along the cloud's direction where the
    run published that test), per round, one line per run."""
    fig, (ax_lam, ax_terms) = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=120)
    for run in runs:
        series = rectifier_series(run)
        ax_lam.plot(*series["lam"], marker="o", markersize=3, label=run.label)
        axis = bool(series["axis_bias_sq"][0])  # the λ-setting test along ĉ where published, else per direction
        for key, style in (("bias_sq", "-"), ("device_se2", "--"), ("cloud_var", ":")):
            name = f"axis_{key}" if axis else key
            xs, ys = series[name]
            if xs:
                ax_terms.plot(xs, ys, style, label=f"{run.label}: {name}")
    ax_lam.set_xlabel("round")
    ax_lam.set_ylabel("mean λ (weight of the cloud)")
    ax_lam.set_ylim(0, 1.05)
    ax_terms.set_xlabel("round")
    ax_terms.set_ylabel("b², s²/N, τ² (along ĉ, or mean over directions)")
    ax_terms.set_yscale("log")
    for ax in (ax_lam, ax_terms):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
