"""The multi-seed study behind ``docs/results/headline.json`` (``cooperllm report --json``).

Runs are grouped by setting (S1: the cloud's public data in-domain; S2: shifted — a run with ``--public-classes``),
task and strategy; each group holds one run per seed. A claim between two strategies rests on the paired exact
McNemar test of their final predictions on the same test examples (seed by seed, and pooled over the seeds), so a
difference of a few points is only called a difference when the discordant predictions say so.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np

from cooperllm.evaluate import EvalResult, paired_change
from cooperllm.strategies import get_strategy
from cooperllm_app.simulation.metrics import evaluation_of
from cooperllm_app.simulation.plots import Run

STRATEGY_ORDER = ("zgr", "zo", "bp", "cloud")
SEEDS_TARGET = 3  # the seeds a claim needs; groups with fewer are marked, not hidden


def setting_of(run: Run) -> str:
    return "S2" if run.config.get("public_classes") else "S1"


def final_of(run: Run) -> EvalResult | None:
    """The last round's evaluation when the run is complete (it scored the final, full set)."""
    if not run.rounds or run.rounds[-1]["round"] != run.config["rounds"] - 1:
        return None
    return evaluation_of(run.rounds[-1])


def mcnemar(a: EvalResult, b: EvalResult) -> dict:
    """a vs b on the same examples: how many predictions only a got right, only b, and the exact two-sided p."""
    if a.n_examples != b.n_examples:
        raise ValueError(f"paired test needs the same examples: {a.n_examples} vs {b.n_examples}")
    change = paired_change(b, a)
    return {"only_a_right": change.gained, "only_b_right": change.lost, "p_value": change.p_value}


def _pooled(pairs: list[tuple[EvalResult, EvalResult]]) -> dict:
    def joined(results: list[EvalResult]) -> EvalResult:
        correct = np.concatenate([r.correct for r in results])
        return EvalResult(float(correct.mean()), 0.0, len(correct), correct)

    return mcnemar(joined([a for a, _ in pairs]), joined([b for _, b in pairs]))


def _mean_lambda(run: Run) -> float | None:
    lams = [m["lam"] for m in run.rounds if m.get("lam") is not None]
    return float(np.mean(lams)) if lams else None


def _round_of_reaching(run: Run, target: float) -> int | None:
    """The first evaluated round (1-based) whose accuracy reaches ``target`` (the curves' subset, not the final set)."""
    for m in run.rounds:
        if m.get("accuracy") is not None and m["accuracy"] >= target - 1e-12:
            return m["round"] + 1
    return None


Key = tuple[str, str, str, str | None]  # (setting, task, strategy, rectifier rule: zgr's, else None)


def rule_of(run: Run) -> str | None:
    """zgr's rectifier rule (RunConfig.rectifier; runs from before the option ran the per-direction rule), with
    "+follow" where its forward budget follows λ (RunConfig.budget)."""
    if run.config["strategy"] != "zgr":
        return None
    rule = run.config.get("rectifier") or "direction"
    return f"{rule}+follow" if run.config.get("budget") == "follow" else rule


def group_runs(runs: list[Run]) -> dict[Key, dict[int, Run]]:
    """Runs by (setting, task, strategy, zgr's rectifier rule), then seed. A strategy that never sees the cloud's
    public data (zo, bp) runs the same computation in S1 and S2, so one run of it stands in both settings."""
    groups: dict[Key, dict[int, Run]] = defaultdict(dict)
    settings = sorted({setting_of(run) for run in runs})
    for run in runs:
        if run.config.get("attack", "none") != "none":
            raise ValueError(
                f"{run.folder} ran with a malicious device (--attack {run.config['attack']}): it belongs to the "
                "robustness study (bench/robustness.py), not beside the strategies' comparison"
            )
        strategy = run.config["strategy"]
        seed = int(run.config["seed"])
        for setting in [setting_of(run)] if get_strategy(strategy).guided else settings:
            key = (setting, run.task, strategy, rule_of(run))
            if seed in groups[key]:
                raise ValueError(f"two runs of {key} with seed {seed}: {groups[key][seed].folder} and {run.folder}")
            groups[key][seed] = run
    return groups


def build(runs: list[Run]) -> dict:
    """headline.json: one entry per (setting, task, strategy, zgr's rule) with per-seed finals, curves and λ; the
    zero-shot accuracy per task; and the paired comparisons between zgr and every other strategy of the same
    setting."""
    groups = group_runs(runs)
    entries, zero_shot = [], {}
    for (setting, task, strategy, rule), by_seed in sorted(
        groups.items(),
        key=lambda kv: (kv[0][0], kv[0][1], STRATEGY_ORDER.index(kv[0][2]), kv[0][3] not in (None, "direction")),
    ):
        seeds = sorted(by_seed)
        finals = {s: final_of(by_seed[s]) for s in seeds}
        done = [s for s in seeds if finals[s] is not None]
        for s in seeds:
            base = evaluation_of(by_seed[s].baseline)
            if base is not None:
                zero_shot.setdefault(task, base.accuracy)
        accs = [finals[s].accuracy for s in done]
        entries.append(
            {
                "setting": setting,
                "task": task,
                "strategy": strategy,
                "rectifier": rule,  # zgr's rule for λ ("direction", "axis", "+follow" with its budget); null: not zgr
                "seeds": done,
                "final_accuracy": accs,
                "final_mean": statistics.fmean(accs) if accs else None,
                "final_sd": statistics.stdev(accs) if len(accs) > 1 else None,
                "test_examples": finals[done[0]].n_examples if done else None,
                "curve_examples": by_seed[seeds[0]].config.get("eval_limit"),  # the rounds before the last
                "rounds": by_seed[seeds[0]].config["rounds"],
                "accuracy_by_round": [
                    {str(m["round"] + 1): m["accuracy"] for m in by_seed[s].rounds if m.get("accuracy") is not None}
                    for s in done
                ],
                "mean_lambda": (
                    statistics.fmean(lams) if (lams := [x for s in done if (x := _mean_lambda(by_seed[s]))]) else None
                ),
                "incomplete_seeds": [s for s in seeds if finals[s] is None],
                "meets_seed_target": len(done) >= SEEDS_TARGET,
                "final_on_full_test": all(by_seed[s].config.get("final_eval_limit") is None for s in seeds),
                "runs": [str(by_seed[s].folder) for s in seeds],
                # the exact command behind each seed's run, as the run folder recorded it (defaults omitted)
                "commands": [by_seed[s].config.get("command") for s in seeds],
            }
        )
    return {
        "seeds_target": SEEDS_TARGET,
        "complete": bool(entries) and all(e["meets_seed_target"] and e["final_on_full_test"] for e in entries),
        "zero_shot_accuracy": zero_shot,
        "runs": entries,
        "comparisons": comparisons(groups),
    }


def comparisons(groups: dict[Key, dict[int, Run]]) -> list[dict]:
    """zgr against each other strategy of the same setting and task: mean difference, paired McNemar per seed and
    pooled, and (against zo) how many fewer rounds zgr needed to reach zo's final accuracy on the curves' subset."""
    out = []
    for (setting, task, strategy, rule), zgr_runs in sorted(
        groups.items(), key=lambda kv: (kv[0][:3], kv[0][3] != "direction")
    ):
        if strategy != "zgr":
            continue
        for other in STRATEGY_ORDER[1:]:
            other_runs = groups.get((setting, task, other, None))
            if not other_runs:
                continue
            pairs = []
            for seed in sorted(set(zgr_runs) & set(other_runs)):
                a, b = final_of(zgr_runs[seed]), final_of(other_runs[seed])
                if a is not None and b is not None and a.n_examples == b.n_examples:
                    pairs.append((seed, a, b))
            if not pairs:
                continue
            entry = {
                "setting": setting,
                "task": task,
                "a": "zgr",
                "rectifier": rule,
                "b": other,
                "seeds": [s for s, _, _ in pairs],
                "mean_difference_pp": 100 * statistics.fmean(a.accuracy - b.accuracy for _, a, b in pairs),
                "per_seed": [{"seed": s, **mcnemar(a, b)} for s, a, b in pairs],
                "pooled": _pooled([(a, b) for _, a, b in pairs]),
            }
            if other == "zo":
                entry["rounds_to_zo_final"] = [_speedup(zgr_runs[s], other_runs[s]) for s, _, _ in pairs]
            out.append(entry)
    return out


def _speedup(zgr: Run, zo: Run) -> dict:
    """Rounds each needs to reach zo's best accuracy on the curves' subset (zo's own first round there)."""
    accs = [m["accuracy"] for m in zo.rounds[:-1] if m.get("accuracy") is not None]  # the subset's curve
    if not accs:
        return {"target": None, "zo_rounds": None, "zgr_rounds": None, "ratio": None}
    target = max(accs)
    zo_r = _round_of_reaching(zo, target)
    zgr_r = _round_of_reaching(zgr, target)
    return {
        "target": target,
        "zo_rounds": zo_r,
        "zgr_rounds": zgr_r,
        "ratio": None if zo_r is None or zgr_r is None else zo_r / zgr_r,
    }


def markdown(study: dict) -> list[str]:
    """The table of docs/RESULTS.md: mean ± sd of the final full-test accuracy per setting, task and strategy, then
    the paired comparisons."""
    lines = [
        "| setting | task | strategy | seeds | final accuracy (mean ± sd) | per seed | mean λ | test examples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in study["runs"]:
        mean = "–" if e["final_mean"] is None else f"{100 * e['final_mean']:.2f} %"
        sd = "" if e["final_sd"] is None else f" ± {100 * e['final_sd']:.2f}"
        per = ", ".join(f"{100 * a:.1f}" for a in e["final_accuracy"]) or "–"
        lam = "–" if e["mean_lambda"] is None else f"{e['mean_lambda']:.3f}"
        seeds = ",".join(map(str, e["seeds"])) or "–"
        lines.append(
            f"| {e['setting']} | {e['task']} | {_label(e)} | {seeds} | {mean}{sd} | {per} | {lam} | "
            f"{e['test_examples'] or '–'} |"
        )
    lines += [
        "",
        "| setting | task | comparison | seeds | mean difference | only zgr right / only other right (pooled) | "
        "McNemar p (pooled) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in study["comparisons"]:
        p = c["pooled"]
        lines.append(
            f"| {c['setting']} | {c['task']} | {_label({'strategy': 'zgr', **c})} − {c['b']} | "
            f"{','.join(map(str, c['seeds']))} | "
            f"{c['mean_difference_pp']:+.2f} pp | {p['only_a_right']} / {p['only_b_right']} | {p['p_value']:.3g} |"
        )
    zs = ", ".join(f"{t} {100 * a:.2f} %" for t, a in sorted(study["zero_shot_accuracy"].items()))
    lines += ["", f"Zero-shot (θ₀) accuracy on the same test examples: {zs or '–'}."]
    short = [f"{e['setting']} {_label(e)}" for e in study["runs"] if not e["meets_seed_target"]]
    if short:
        lines.append(
            f"**Fewer than {study['seeds_target']} seeds** (read as single measurements, not as the study's claims): "
            + ", ".join(short)
            + "."
        )
    lines.append("")
    return lines


def _label(entry: dict) -> str:
    """zgr with a rule other than the default shows it: "zgr (axis)"."""
    rule = entry.get("rectifier")
    return entry["strategy"] if rule in (None, "direction") else f"{entry['strategy']} ({rule})"
