"""The multi-seed study (headline.json): grouping by setting, shared zo/bp runs, paired McNemar tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from cooperllm_app.simulation import study
from cooperllm_app.simulation.metrics import pack_correct
from cooperllm_app.simulation.plots import Run

N = 100


def _line(round_: int | None, correct: np.ndarray, lam=None) -> dict:
    return {
        "kind": "baseline" if round_ is None else "round",
        "round": round_,
        "accuracy": float(correct.mean()),
        "loss": 0.5,
        "n_eval": len(correct),
        "correct_bits": pack_correct(correct),
        "lam": lam,
        "wall_s": None if round_ is None else 10.0 * (round_ + 1),
        "cum_bytes": None if round_ is None else 1e6 * (round_ + 1),
    }


def _run(strategy: str, seed: int, final: np.ndarray, shifted: bool = False, lam=None, rounds: int = 3) -> Run:
    config = {
        "strategy": strategy,
        "seed": seed,
        "rounds": rounds,
        "public_classes": [1] if shifted else None,
        "final_eval_limit": None,
    }
    curve = [_line(r, final[: N // 2] if r < rounds - 1 else final, lam) for r in range(rounds)]
    base = np.zeros(N, bool)
    base[: N // 2] = True
    return Run(
        f"{strategy}-{seed}", Path(f"/runs/{strategy}-{seed}-{shifted}"), config, _line(None, base), curve, "seq-cls"
    )


def _correct(k: int, seed: int = 0) -> np.ndarray:
    c = np.zeros(N, bool)
    c[np.random.default_rng(seed).permutation(N)[:k]] = True
    return c


def test_study_groups_seeds_shares_zo_across_settings_and_tests_pairs():
    runs = [
        _run("zgr", 0, _correct(80, 1), lam=0.9),
        _run("zgr", 1, _correct(82, 2), lam=0.8),
        _run("zo", 0, _correct(60, 3)),
        _run("zo", 1, _correct(58, 4)),
        _run("zgr", 0, _correct(75, 5), shifted=True, lam=0.3),
        _run("cloud", 0, _correct(52, 6), shifted=True, lam=1.0),
    ]
    found = study.build(runs)
    by = {(e["setting"], e["strategy"]): e for e in found["runs"]}
    assert by[("S1", "zgr")]["seeds"] == [0, 1] and by[("S1", "zgr")]["final_accuracy"] == [0.8, 0.82]
    assert by[("S1", "zgr")]["final_mean"] == pytest.approx(0.81) and by[("S1", "zgr")]["mean_lambda"] == pytest.approx(
        0.85
    )
    assert by[("S2", "zo")]["runs"] == by[("S1", "zo")]["runs"]  # zo never sees the public data: one run, both settings
    assert by[("S1", "zo")]["mean_lambda"] is None and by[("S1", "zgr")]["test_examples"] == N
    assert found["zero_shot_accuracy"] == {"seq-cls": 0.5}
    assert not found["complete"] and not by[("S1", "zgr")]["meets_seed_target"]  # 2 seeds of the 3 a claim needs
    assert by[("S1", "zgr")]["final_on_full_test"]
    comp = {(c["setting"], c["b"]): c for c in found["comparisons"]}
    s1 = comp[("S1", "zo")]
    assert s1["seeds"] == [0, 1] and s1["mean_difference_pp"] == pytest.approx(22.0)
    assert s1["pooled"]["p_value"] < 1e-4 and s1["pooled"]["only_a_right"] > s1["pooled"]["only_b_right"]
    assert comp[("S2", "cloud")]["per_seed"][0]["p_value"] < 0.01
    assert ("S1", "cloud") not in comp  # no S1 cloud run: no comparison invented


def test_an_unfinished_run_is_listed_but_not_counted():
    runs = [_run("zgr", 0, _correct(80)), _run("zgr", 1, _correct(80))]
    runs[1].rounds.pop()  # the last round never came
    entry = study.build(runs)["runs"][0]
    assert entry["seeds"] == [0] and entry["incomplete_seeds"] == [1]


def test_two_runs_of_the_same_seed_are_refused():
    with pytest.raises(ValueError, match="two runs"):
        study.build([_run("zo", 0, _correct(60)), _run("zo", 0, _correct(61))])


def test_markdown_has_a_row_per_group_and_comparison():
    found = study.build([_run("zgr", 0, _correct(80)), _run("zo", 0, _correct(60))])
    text = "\n".join(study.markdown(found))
    assert "| S1 | seq-cls | zgr | 0 | 80.00 %" in text and "zgr − zo" in text
    assert "Fewer than 3 seeds" in text


def test_zgr_rules_are_grouped_and_compared_apart():
    """A zgr run with RunConfig.rectifier 'axis' is its own group beside the default rule's (runs from before the
    option count as 'direction'), and each is compared with the same baselines."""
    axis = _run("zgr", 0, _correct(70, 7), shifted=True, lam=0.1)
    axis.config["rectifier"] = "axis"
    runs = [_run("zgr", 0, _correct(52, 8), shifted=True, lam=0.9), axis, _run("cloud", 0, _correct(51, 9), True)]
    found = study.build(runs)
    rules = {(e["strategy"], e["rectifier"]): e["final_accuracy"] for e in found["runs"]}
    assert rules == {("zgr", "direction"): [0.52], ("zgr", "axis"): [0.7], ("cloud", None): [0.51]}
    comp = {(c["rectifier"], c["b"]): c["mean_difference_pp"] for c in found["comparisons"]}
    assert comp == {("direction", "cloud"): pytest.approx(1.0), ("axis", "cloud"): pytest.approx(19.0)}
    text = "\n".join(study.markdown(found))
    assert "| S2 | seq-cls | zgr (axis) | 0 | 70.00 %" in text and "zgr (axis) − cloud" in text
    follow = _run("zgr", 0, _correct(65, 7), shifted=True, lam=0.1)
    follow.config.update(rectifier="axis", budget="follow")  # a third group: the budget that follows λ
    found = study.build([*runs, follow])
    assert {e["rectifier"] for e in found["runs"] if e["strategy"] == "zgr"} == {"direction", "axis", "axis+follow"}
    assert "| S2 | seq-cls | zgr (axis+follow) | 0 | 65.00 %" in "\n".join(study.markdown(found))


def test_figures_draw_one_line_per_arm_with_the_seeds_mean_and_range(tmp_path):
    """A study's figures: one panel per task and setting, one line per arm averaged over its seeds (the seeds' range
    shaded); runs that are not one per arm and seed fall back to a line per run."""
    from cooperllm_app.simulation.figures import arms_of, mean_curve, plot_runs

    zgr = [_run("zgr", s, _correct(70 + 10 * s, s), lam=0.5) for s in range(3)]
    runs = [*zgr, _run("zo", 0, _correct(60, 3)), _run("cloud", 0, _correct(52, 6), shifted=True, lam=1.0)]
    arms = arms_of(runs)
    # zo never sees the cloud's data: its run stands in both settings; zgr and cloud each in their own
    assert [(title, label) for title, label, _ in arms] == [
        ("seq-cls S1", "zgr (direction), 3 seeds"),
        ("seq-cls S1", "zo-0"),  # an arm of one run keeps the run's label (cooperllm report --labels)
        ("seq-cls S2", "cloud-0"),
        ("seq-cls S2", "zo-0"),
    ]
    xs, mean, lo, hi = mean_curve(arms[0][2], lambda m: m["round"] + 1)
    assert xs.tolist() == [0.0, 1.0, 2.0, 3.0]  # the baseline, then every round all three seeds scored
    finals = [run.rounds[-1]["accuracy"] * 100 for run in zgr]
    assert mean[-1] == pytest.approx(np.mean(finals)) and (lo[-1], hi[-1]) == (min(finals), max(finals))
    assert mean[0] == lo[0] == hi[0] == 50.0  # one θ₀ for every seed

    twin = _run("zgr", 0, _correct(90, 9), lam=0.5)  # a second zgr run with seed 0 (another η, say)
    assert [label for _, label, _ in arms_of([zgr[0], twin])] == [zgr[0].label, twin.label]

    with warnings.catch_warnings():  # nothing from matplotlib reaches the user's terminal
        warnings.simplefilter("error")
        pngs = plot_runs(runs, tmp_path)  # these rounds publish no rectifier numbers: no figure of them
    assert sorted(p.name for p in pngs) == [
        "accuracy_vs_bytes.png",
        "accuracy_vs_rounds.png",
        "accuracy_vs_wallclock.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in pngs)
