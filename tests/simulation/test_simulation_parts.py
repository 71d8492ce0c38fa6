"""Simulation parts without processes: device draw, run-folder config, torn metrics lines, the recorded command."""

from __future__ import annotations

import json

import pytest

from cooperllm_app.simulation.config import SimConfig, block_list, command_line, save_or_check_config
from cooperllm_app.simulation.metrics import append_line, read_lines
from cooperllm_app.simulation.resume import select_devices


def test_each_round_draws_k_distinct_devices_the_same_way_every_time():
    draws = [select_devices(7, r, 20, 5) for r in range(50)]
    assert all(len(set(d)) == 5 and all(0 <= x < 20 for x in d) for d in draws)
    assert draws == [select_devices(7, r, 20, 5) for r in range(50)]
    assert len({tuple(d) for d in draws}) > 40  # rounds see different devices
    assert draws != [select_devices(8, r, 20, 5) for r in range(50)]


def test_a_torn_last_line_is_dropped_and_cut_but_a_bad_middle_line_is_corruption(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_line(path, {"round": 0})
    append_line(path, {"round": 1})
    with open(path, "ab") as f:
        f.write(b'{"round": 2, "accur')  # a kill mid-write
    assert read_lines(path) == [{"round": 0}, {"round": 1}]
    assert read_lines(path, repair=True) == [{"round": 0}, {"round": 1}]
    append_line(path, {"round": 2})
    assert [m["round"] for m in read_lines(path)] == [0, 1, 2]
    path.write_text('{"round": 0}\nnot json\n{"round": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_lines(path)


def test_a_run_folder_keeps_its_config_and_refuses_another(tmp_path):
    cfg = SimConfig(artifacts="a", rounds=3, workers=2)
    assert save_or_check_config(tmp_path, cfg) is cfg
    again = save_or_check_config(tmp_path, SimConfig(artifacts="a", rounds=3, workers=1))
    assert again.rounds == 3 and again.workers == 1  # workers change speed, not results: free on resume
    with pytest.raises(ValueError, match="rounds: 3 here vs 4 asked"):
        save_or_check_config(tmp_path, SimConfig(artifacts="a", rounds=4))
    assert json.loads((tmp_path / "config.json").read_text())["rounds"] == 3


def test_the_recorded_command_names_only_what_differs_from_the_defaults():
    cfg = SimConfig(artifacts="art", strategy="bp", public_classes=[1], guidance_rank=2, lam=0.5)
    assert command_line(cfg, "runs/x") == (
        "cooperllm simulate --artifacts art --out runs/x --strategy bp --public-classes 1 --lam 0.5 --rank 2"
    )
    # lam 'auto' is the default now: not named
    assert "--lam" not in command_line(SimConfig(artifacts="art", lam="auto"), "runs/x")
    assert block_list("each") is None and block_list("all") == [-1] and block_list("0,3") == [0, 3]
    with pytest.raises(ValueError):
        block_list("head")


def test_shards_smaller_than_a_batch_are_refused_before_anything_starts(tmp_path, tiny_artifacts, tiny_model_dir):
    from cooperllm_app.simulation.runner import simulate

    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"a fine film {i}\t{i % 2}\n" for i in range(20)))
    cfg = SimConfig(
        artifacts=str(tiny_artifacts), model=str(tiny_model_dir), clients=4, per_round=2, train_data=str(train)
    )
    with pytest.raises(ValueError, match="fewer examples than one batch of 8"):
        simulate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "cloud").exists()


def _run(strategy: str, task: str, accs: list[float], rss: float, losses: list[float] | None = None):
    from pathlib import Path

    from cooperllm_app.simulation.plots import Run

    losses = losses or [0.7] * len(accs)
    rounds = [
        {"round": i, "accuracy": a, "loss": loss, "wall_s": 10.0 * (i + 1), "device_peak_rss_mb": rss}
        for i, (a, loss) in enumerate(zip(accs, losses, strict=True))
    ]
    return Run(strategy, Path(strategy), {"strategy": strategy}, {"accuracy": 0.5, "loss": 0.69}, rounds, task)


def test_headline_measures_speedup_gain_and_memory_beside_the_paper():
    from cooperllm_app.simulation.headline import headline_for, headline_markdown

    zo = _run("zo", "seq-cls", [0.5, 0.52, 0.55, 0.55, 0.56, 0.6, 0.6, 0.58], 200.0, [0.69, 0.68] * 3 + [0.67, 0.66])
    zgr = _run("zgr", "seq-cls", [0.61, 0.7, 0.75, 0.8, 0.8, 0.82], 250.0, [0.68, 0.65, 0.6] * 2)  # budget is 6
    bp = _run("bp", "seq-cls", [0.7, 0.8, 0.85, 0.86, 0.87, 0.88, 0.88, 0.88], 1250.0)
    h = headline_for("seq-cls", [zgr, zo, bp])
    assert h.target == 0.6 and h.zo_at.rounds == 6 and h.zgr_at.rounds == 1 and h.speedup == 6.0
    assert h.budget == 6 and (h.zgr_final, h.zo_final, h.bp_final) == (0.82, 0.6, 0.88)
    assert h.loss_target == 0.66 and h.zo_loss_at.rounds == 8 and h.zgr_loss_at.rounds == 2 and h.loss_speedup == 4.0
    assert abs(h.memory_reduction - 0.8) < 1e-12
    text = "\n".join(headline_markdown([zgr, zo, bp]))
    assert "**6.0×** (6 rounds for zo, 1 for zgr" in text and "| 8.8× |" in text
    assert "| rounds to zo's lowest test loss (0.6600), zo ÷ zgr | **4.0×** (8 rounds for zo, 2 for zgr" in text
    assert "**+22.00 pp**" in text and "-6.00 pp (bp 88.00 %)" in text and "**80.0 %**" in text
    # zgr that never reaches zo's best is said so, not given a speedup
    slow = _run("zgr", "seq-cls", [0.5, 0.51], 250.0)
    assert headline_for("seq-cls", [slow, zo]).speedup is None
    assert "zgr never reached zo's best" in "\n".join(headline_markdown([slow, zo]))
    # no zo run of the task: no headline section
    assert headline_markdown([zgr, bp]) == [] and headline_for("causal-lm-cls", [zgr, zo, bp]) is None


def test_a_run_read_at_an_earlier_round_drops_the_later_rounds():
    from cooperllm_app.simulation.plots import summary_row

    run = _run("zgr", "seq-cls", [0.6, 0.7, 0.65], 250.0, [0.6, 0.5, 0.55])
    run.config.update(clients=20, per_round=5, partition="dirichlet", rounds=3)
    for m in run.rounds:
        m.update(bytes_up_mean=100.0, bytes_down_mean=2e6, cum_bytes=1e7 * (m["round"] + 1))
    early = run.up_to(2)
    assert [m["round"] for m in early.rounds] == [0, 1] and len(run.rounds) == 3
    row = summary_row(early)
    assert (row["rounds"], row["acc final %"], row["loss final"]) == ("2/3", "70.00", "0.5000")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run.up_to(0)
