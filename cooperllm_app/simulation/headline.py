"""The three headline figures of the paper, measured on simulation runs: convergence speedup, accuracy gain, memory.

Computed per task from the first ``zgr``, ``zo`` and ``bp`` run of that task among the runs given to
``cooperllm report``, and shown beside the paper's figures (Sun et al., arXiv 2601.12917) so a reader sees at once
which targets a run met and by how much it missed the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from cooperllm_app.simulation.plots import Run

PAPER_SPEEDUP = 8.8  # × fewer rounds than federated ZO to reach the same accuracy
PAPER_GAIN_PP = 10.0  # accuracy points over federated ZO
PAPER_MEMORY_REDUCTION = 0.864  # on-device memory vs backprop


@dataclass(frozen=True)
class Point:
    rounds: int  # rounds done (0: θ₀)
    wall_s: float
    accuracy: float
    loss: float


def curve(run: Run) -> list[Point]:
    """θ₀ then every scored round, in round order."""
    b = run.baseline
    out = [Point(0, 0.0, b["accuracy"], b["loss"])] if b else []
    scored = [m for m in run.rounds if m.get("accuracy") is not None]
    out += [Point(m["round"] + 1, m["wall_s"], m["accuracy"], m["loss"]) for m in scored]
    return out


def first_reaching(points: list[Point], target: float) -> Point | None:
    return next((p for p in points if p.accuracy >= target - 1e-12), None)


def first_below(points: list[Point], target: float) -> Point | None:
    return next((p for p in points if p.loss <= target + 1e-12), None)


def speedup(zo_at: Point | None, zgr_at: Point | None) -> float | None:
    """zo's rounds ÷ zgr's rounds to the same point; None when either never got there or zo was there at θ₀."""
    if zo_at is None or zgr_at is None or zo_at.rounds == 0:
        return None
    return zo_at.rounds / max(zgr_at.rounds, 1)


@dataclass(frozen=True)
class Headline:
    task: str
    target: float | None  # zo's best accuracy (its plateau within its budget)
    zo_at: Point | None  # where zo first reached it
    zgr_at: Point | None  # where zgr first reached it (None: never)
    loss_target: float | None  # zo's lowest test loss
    zo_loss_at: Point | None
    zgr_loss_at: Point | None
    budget: int  # rounds both zgr and zo have scored
    zgr_final: float | None
    zo_final: float | None
    bp_final: float | None
    baseline: float | None
    zgr_rss: float | None
    bp_rss: float | None

    @property
    def speedup(self) -> float | None:
        return speedup(self.zo_at, self.zgr_at)

    @property
    def loss_speedup(self) -> float | None:
        return speedup(self.zo_loss_at, self.zgr_loss_at)

    @property
    def memory_reduction(self) -> float | None:
        if self.zgr_rss is None or not self.bp_rss:
            return None
        return 1.0 - self.zgr_rss / self.bp_rss


def _at_budget(points: list[Point], budget: int) -> float | None:
    known = [p for p in points if p.rounds <= budget]
    return known[-1].accuracy if known else None


def headline_for(task: str, runs: list[Run]) -> Headline | None:
    """The paper's figures for one task, from the in-domain runs (no --public-classes) and zgr's default rule: the
    paper's setting. The first such run of each strategy counts."""
    by = {}
    for r in runs:
        in_domain = not r.config.get("public_classes")
        default_rule = r.config.get("rectifier") in (None, "direction") and r.config.get("budget") in (None, "fixed")
        if r.task == task and in_domain and default_rule:
            by.setdefault(r.config.get("strategy"), r)
    zgr, zo, bp = by.get("zgr"), by.get("zo"), by.get("bp")
    if zgr is None or zo is None:
        return None
    zc, oc = curve(zgr), curve(zo)
    target = max((p.accuracy for p in oc), default=None)
    zo_at = None if target is None else first_reaching(oc, target)
    zgr_at = None if target is None else first_reaching(zc, target)
    loss_target = min((p.loss for p in oc), default=None)
    budget = min(zc[-1].rounds if zc else 0, oc[-1].rounds if oc else 0)
    bc = curve(bp) if bp else []
    return Headline(
        task=task,
        target=target,
        zo_at=zo_at,
        zgr_at=zgr_at,
        loss_target=loss_target,
        zo_loss_at=None if loss_target is None else first_below(oc, loss_target),
        zgr_loss_at=None if loss_target is None else first_below(zc, loss_target),
        budget=budget,
        zgr_final=_at_budget(zc, budget),
        zo_final=_at_budget(oc, budget),
        bp_final=_at_budget(bc, budget) if bc else None,
        baseline=zgr.baseline["accuracy"] if zgr.baseline else None,
        zgr_rss=zgr.peak_rss(),
        bp_rss=bp.peak_rss() if bp else None,
    )


def _pp(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{(a - b) * 100:+.2f} pp"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.2f} %"


def _speed_text(value: float | None, zo_at: Point | None, zgr_at: Point | None, what: str, budget: int) -> str:
    if value is not None:
        return (
            f"**{value:.1f}×** ({zo_at.rounds} rounds for zo, {zgr_at.rounds} for zgr; "
            f"wall-clock {zo_at.wall_s:.0f} s vs {zgr_at.wall_s:.0f} s)"
        )
    if zo_at is not None and zo_at.rounds == 0:
        return "not measurable: zo never improved on θ₀ within its rounds"
    return f"zgr never reached {what} within {budget} rounds"


def render(h: Headline) -> list[str]:
    """Markdown rows: measured beside the paper, with the baselines of the same runs."""
    speed = _speed_text(h.speedup, h.zo_at, h.zgr_at, f"zo's best accuracy ({_pct(h.target)})", h.budget)
    loss_speed = _speed_text(
        h.loss_speedup, h.zo_loss_at, h.zgr_loss_at, f"zo's lowest test loss ({h.loss_target:.4f})", h.budget
    )
    gain = f"**{_pp(h.zgr_final, h.zo_final)}** (zgr {_pct(h.zgr_final)}, zo {_pct(h.zo_final)} at round {h.budget})"
    vs_bp = f"{_pp(h.zgr_final, h.bp_final)} (bp {_pct(h.bp_final)})"
    mem = h.memory_reduction
    memory = "–"
    if mem is not None:
        memory = f"**{mem * 100:.1f} %** (zgr device {h.zgr_rss:.0f} MB, bp device {h.bp_rss:.0f} MB)"
    rows = [
        f"### {h.task}",
        "",
        "| figure | measured here | paper |",
        "|---|---|---|",
        f"| rounds to zo's best accuracy ({_pct(h.target)}), zo ÷ zgr | {speed} | {PAPER_SPEEDUP}× |",
        f"| rounds to zo's lowest test loss ({h.loss_target:.4f}), zo ÷ zgr | {loss_speed} | – |",
        f"| accuracy gain over zo at a fixed round budget | {gain} | +{PAPER_GAIN_PP:.0f} pp |",
        f"| zgr vs bp (FedAvg of backprop) at that budget | {vs_bp} | within 2 pp (target) |",
        f"| device peak RSS, zgr vs a bp device | {memory} | {PAPER_MEMORY_REDUCTION * 100:.1f} % lower |",
    ]
    if h.baseline is not None and h.bp_final is not None and h.bp_final > h.baseline:
        gap = h.bp_final - h.baseline
        shares = ", ".join(
            f"{name} {(acc - h.baseline) / gap * 100:.0f} %"
            for name, acc in (("zgr", h.zgr_final), ("zo", h.zo_final))
            if acc is not None
        )
        rows.append(f"| share of the θ₀ → bp gap ({_pct(h.baseline)} → {_pct(h.bp_final)}) closed | {shares} | – |")
    return [*rows, ""]


def headline_markdown(runs: list[Run]) -> list[str]:
    """The headline section, one table per task that has both a zgr and a zo run; empty when none has."""
    tasks = list(dict.fromkeys(r.task for r in runs))
    found = [h for h in (headline_for(t, runs) for t in tasks) if h is not None]
    if not found:
        return []
    out = ["## Headline figures beside the paper's", ""]
    for h in found:
        out += render(h)
    return out
