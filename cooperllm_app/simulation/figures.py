"""The figures of ``cooperllm report`` (matplotlib, Agg backend): accuracy against rounds, wall-clock and bytes, and
the rectifier's λ and its terms.

A study holds one run per seed of each arm (``study.group_runs``: setting, task, strategy, zgr's rule), so a figure
draws one panel per task and setting and, in it, one line per arm: the mean over its seeds at each evaluated round,
with the seeds' range shaded. One line per run of a 36-run study buried the axes under its legend. Runs that do not
form such a study (two runs of one arm with the same seed, say two step sizes) get one line per run, panel per task.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cooperllm_app.simulation.plots import AXES, Run, rectifier_series
from cooperllm_app.simulation.study import group_runs

Arm = tuple[str, str, list[Run]]  # (panel title, line label, the arm's runs: one per seed)


def arms_of(runs: list[Run]) -> list[Arm]:
    """The lines to draw: one per study arm, or one per run where the runs are not a seed study."""
    try:
        groups = group_runs(runs)
    except ValueError:  # not one run per arm and seed (or a robustness run): every run its own line
        return [(run.task, run.label, [run]) for run in runs]
    arms = []
    for (setting, task, strategy, rule), by_seed in sorted(groups.items()):
        group = [by_seed[s] for s in sorted(by_seed)]
        name = strategy if rule is None else f"{strategy} ({rule})"
        label = group[0].label if len(group) == 1 else f"{name}, {len(group)} seeds"  # a single run keeps its label
        arms.append((f"{task} {setting}", label, group))
    return arms


def mean_curve(
    runs: Sequence[Run], x_of: Callable[[dict], float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, min, max) of accuracy (%) over the runs at the points every run evaluated: the baseline (x = 0) and
    the rounds scored in each; x is the runs' mean x there (wall-clock and bytes differ from seed to seed)."""
    by_round: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        for round_, x, y in run.points(x_of):
            by_round[round_].append((x, y))
    common = [r for r in sorted(by_round) if len(by_round[r]) == len(runs)]
    pts = np.array([by_round[r] for r in common]).reshape(len(common), len(runs), 2)
    ys = pts[:, :, 1]
    return pts[:, :, 0].mean(axis=1), ys.mean(axis=1), ys.min(axis=1), ys.max(axis=1)


def _colours(plt, arms: list[Arm]) -> dict[str, str]:
    """One colour per line label, the same in every panel and figure (matplotlib's cycle, in order of appearance)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(label for _, label, _ in arms))
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _panels(plt, titles: list[str], width: float, height: float):
    """One row of axes per panel title (in order), and the figure."""
    fig, axes = plt.subplots(len(titles), 1, figsize=(width, height * len(titles)), dpi=120, squeeze=False)
    return fig, {t: axes[i][0] for i, t in enumerate(titles)}


def _finish(fig, axes, path: Path) -> Path:
    for title, ax in axes.items():
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[1]:  # a panel without lines gets no legend (matplotlib warns of an empty one)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_runs(runs: list[Run], out_dir: Path) -> list[Path]:
    """One PNG per x axis (rounds, wall-clock, bytes) and, where a run published the rectifier's numbers, one of λ
    and its terms."""
    import matplotlib  # deferred: loads matplotlib (heavy; not needed at import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib (heavy; not needed at import)

    out_dir.mkdir(parents=True, exist_ok=True)
    arms = arms_of(runs)
    titles = list(dict.fromkeys(title for title, _, _ in arms))
    colour = _colours(plt, arms)
    written = []
    for name, xlabel, x_of in AXES:
        fig, axes = _panels(plt, titles, 7.5, 3.2)
        curves = [(title, label, *mean_curve(group, x_of)) for title, label, group in arms]
        ends = [xs[-1] for *_, xs, _, _, _ in curves if len(xs) and xs[-1] > 0]
        log_x = name == "accuracy_vs_bytes.png" and ends and max(ends) > 30 * min(ends)  # e.g. bp vs ZO bytes
        for title, label, xs, mean, lo, hi in curves:
            if log_x:  # the baseline (x = 0) has no place on a log axis
                keep = xs > 0
                xs, mean, lo, hi = xs[keep], mean[keep], lo[keep], hi[keep]
            if not len(xs):
                continue
            axes[title].plot(xs, mean, marker="o", markersize=3, label=label, color=colour[label])
            if np.any(hi > lo):
                axes[title].fill_between(xs, lo, hi, color=colour[label], alpha=0.15, linewidth=0)
        for ax in axes.values():
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
        written.append(_finish(fig, axes, out_dir / name))
        plt.close(fig)
    rectified = [(t, label, group) for t, label, group in arms if any(m.get("rectifier") for m in group[0].rounds)]
    if rectified:
        written.append(_plot_rectifier(plt, rectified, colour, out_dir / "rectifier_vs_rounds.png"))
    return written


def _mean_series(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """A rectifier series averaged over the runs at the rounds every run published it."""
    per_run = [dict(zip(*rectifier_series(run)[key], strict=True)) for run in runs]
    rounds = sorted(set.intersection(*(set(s) for s in per_run)))
    return np.array(rounds), np.array([np.mean([s[r] for s in per_run]) for r in rounds])


def _plot_rectifier(plt, arms: list[Arm], colour: dict[str, str], path: Path) -> Path:
    """Per panel (task and setting): λ (mean over blocks and directions) and the three terms it is made of (along the
    cloud's direction where the runs published that test, else per direction), per round, averaged over seeds."""
    titles = list(dict.fromkeys(title for title, _, _ in arms))
    fig, grid = plt.subplots(len(titles), 2, figsize=(13.0, 3.2 * len(titles)), dpi=120, squeeze=False)
    lam_axes = {t: grid[i][0] for i, t in enumerate(titles)}
    term_axes = {t: grid[i][1] for i, t in enumerate(titles)}
    for title, label, group in arms:
        lam_axes[title].plot(*_mean_series(group, "lam"), marker="o", markersize=3, label=label, color=colour[label])
        axis = bool(rectifier_series(group[0])["axis_bias_sq"][0])  # the λ-setting test along ĉ where published
        for key, style in (("bias_sq", "-"), ("device_se2", "--"), ("cloud_var", ":")):
            name = f"axis_{key}" if axis else key
            xs, ys = _mean_series(group, name)
            if len(xs):
                term_axes[title].plot(xs, ys, style, label=f"{label}: {name}", color=colour[label])
    for ax in lam_axes.values():
        ax.set_xlabel("round")
        ax.set_ylabel("mean λ (weight of the cloud)")
        ax.set_ylim(0, 1.05)
    for ax in term_axes.values():
        ax.set_xlabel("round")
        ax.set_ylabel("b², s²/N, τ²")
        ax.set_yscale("log")
    _finish(
        fig, {**{f"{t}: λ": a for t, a in lam_axes.items()}, **{f"{t}: terms": a for t, a in term_axes.items()}}, path
    )
    plt.close(fig)
    return path
