"""One home for run configuration: RunConfig defines each run field once (type, bounds, default, help); SimConfig and
the commands' options come from it, and every place that defaults otherwise says so in one table."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace

import pytest

from cooperllm.config_fields import add_config_options, model_fields_of, option_flag, owner_defaults
from cooperllm.protocol import RunConfig
from cooperllm_app.cli import build_parser
from cooperllm_app.commands.demo import DEMO_DEFAULTS, demo_config
from cooperllm_app.commands.simulate import config_from_args
from cooperllm_app.simulation.config import SIMULATION_DEFAULTS, SimConfig, block_list, save_or_check_config

RUN_DEFAULTS = {name: info.default for name, info in RunConfig.model_fields.items()}

# bench pipeline's options that share a RunConfig field's name but not its meaning (that file is not generated from
# the model; this table is where its differences are declared)
BENCH_PIPELINE_DIFFERS = {
    "rounds": 3,  # rounds per measurement, round 0 not counted
    "local_steps": "auto",  # picked per link so that compute ≈ transfer
}


def _blocks(value: str | list[int] | None) -> list[int] | None:
    return block_list(value) if isinstance(value, str) else value


def _subparser(*path: str) -> argparse.ArgumentParser:
    p = build_parser()
    for name in path:
        p = next(a for a in p._actions if isinstance(a.choices, dict)).choices[name]
    return p


@pytest.mark.parametrize(
    ("command", "declared"),
    [
        (("simulate",), {**SIMULATION_DEFAULTS, "blocks": "all"}),  # blocks: SimConfig's own field, in words
        (("demo",), {**SIMULATION_DEFAULTS, **DEMO_DEFAULTS}),
        (("bench", "pipeline"), BENCH_PIPELINE_DIFFERS),
    ],
)
def test_every_cli_default_of_a_run_field_is_run_configs_or_a_declared_difference(command, declared):
    seen = []
    for action in _subparser(*command)._actions:
        if action.dest in RUN_DEFAULTS:
            expected, default = declared.get(action.dest, RUN_DEFAULTS[action.dest]), action.default
            if action.dest == "blocks":  # the simulation names RunConfig.blocks in words: each = None, all = [-1]
                expected, default = _blocks(expected), _blocks(default)
            assert default == expected, f"{' '.join(command)} {action.option_strings}: {action.default!r}"
            seen.append(action.dest)
    assert seen, "the command has no run option: the test looks at the wrong parser"


def test_sim_config_shares_run_configs_fields_and_differs_only_where_declared():
    shared = model_fields_of(SimConfig)
    assert {model for model, _ in shared.values()} == {RunConfig}
    assert all(name == model_name for name, (_, model_name) in shared.items())  # same names: config.json keys
    # a SimConfig field named like a RunConfig field is that field (blocks: the same setting in words)
    assert {f.name for f in fields(SimConfig)} & set(RUN_DEFAULTS) - {"blocks"} == set(shared)
    defaults = owner_defaults(SimConfig)
    for name in shared:
        assert defaults[name] == SIMULATION_DEFAULTS.get(name, RUN_DEFAULTS[name]), name
    for name, value in SIMULATION_DEFAULTS.items():  # no stale entry: each one is a real difference
        assert name in shared and value != RUN_DEFAULTS[name]


def test_simulate_options_parse_into_the_sim_config():
    parser = build_parser()
    base = ["simulate", "--artifacts", "art", "--out", "runs/x"]
    assert config_from_args(parser.parse_args(base), "") == SimConfig(artifacts="art")
    args = parser.parse_args(
        [*base, "--lam", "auto", "--rank", "2", "--deadline", "60", "--public-classes", "0,1", "--epsilon", "0.01"]
    )
    cfg = config_from_args(args, "cmd")
    assert (cfg.lam, cfg.guidance_rank, cfg.deadline_s, cfg.public_classes, cfg.epsilon) == (
        "auto",
        2,
        60.0,
        [0, 1],
        0.01,
    )
    assert cfg.command == "cmd" and isinstance(parser.parse_args([*base, "--lam", "0.25"]).lam, float)
    assert [option_flag(SimConfig, n) for n in ("guidance_rank", "deadline_s", "lam_max")] == [
        "--rank",
        "--deadline",
        "--lam-max",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "5"], "argument --epsilon: '5': Input should be less than or equal to 1"),
        (["--lam", "2"], "argument --lam: '2': Input should be less than or equal to 1; Input should be 'auto'"),
        (["--rank", "17"], "argument --rank: '17': Input should be less than or equal to 16"),
        (["--rounds", "0"], "argument --rounds: '0': Input should be greater than or equal to 1"),
        (["--strategy", "sgd"], "argument --strategy"),
        (["--public-classes", "x"], "argument --public-classes: class indices like '1' or '0,1', got 'x'"),
    ],
)
def test_values_outside_run_configs_bounds_are_refused_while_parsing(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["simulate", "--artifacts", "a", "--out", "o", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_sim_config_outside_run_configs_bounds_is_refused_before_the_run_starts():
    with pytest.raises(ValueError, match=r"invalid run settings: --epsilon: Input should be less than or equal to 1"):
        SimConfig(artifacts="", epsilon=5.0).check()
    with pytest.raises(ValueError, match=r"--blocks: blocks must be a non-empty list of distinct block indices"):
        SimConfig(artifacts="", blocks="0,0").check()
    with pytest.raises(ValueError, match=r"--deadline: Input should be less than or equal to 86400"):
        SimConfig(artifacts="", deadline_s=1e6).check()
    SimConfig(artifacts="", eta=None).check()  # unresolved η: RunConfig's own default stands in


def test_the_demo_runs_the_same_simulation_as_before():
    args = build_parser().parse_args(["demo"])
    assert demo_config(args) == SimConfig(
        artifacts="artifacts/demo-smollm2-seq-cls",
        clients=4,
        per_round=2,
        rounds=10,
        strategy="zgr",
        partition="iid",
        link="10mbit:50ms",
        eval_limit=None,
        final_eval_limit=None,  # θ₀ and the last round on the whole test set
        eval_every=10_000,  # nothing scored in between
        local_steps=1,
        blocks="all",
        eta=1e-2,  # zgr's default η (v2: a normalised step)
        lam="auto",  # RunConfig's default (with the per-direction rule)
    )
    args = build_parser().parse_args(["demo", "--rounds", "5", "--eta", "0.01", "--final-eval-limit", "100"])
    assert (demo_config(args).rounds, demo_config(args).eta, demo_config(args).final_eval_limit) == (5, 0.01, 100)


def test_a_run_folder_written_before_the_shared_fields_still_resumes(tmp_path):
    old = {  # RUN_DIR/config.json as the simulation wrote it before SimConfig took its fields from RunConfig
        "alpha": 0.5, "artifacts": "/a/art", "backend": None, "blocks": "each", "clients": 20,
        "command": "cooperllm simulate --artifacts /a/art --out runs/x --rounds 3 --lam auto", "deadline_s": 21600.0,
        "epsilon": 0.001, "eta": 0.001, "eval_every": 1, "eval_limit": None, "grad_batch_size": 8, "grad_batches": 2,
        "guidance_codec": "dtc", "guidance_rank": 4, "lam": "auto", "lam_max": 0.9, "link": "10mbit:50ms",
        "local_lr": 0.0, "local_steps": 1, "model": "smollm2", "partition": "iid", "per_round": 5,
        "public_classes": None, "public_data": "/d/dev.tsv", "public_n": 2000, "rounds": 3, "seed": 0,
        "strategy": "zgr", "test_data": "/d/test.tsv", "train_data": "/d/train.tsv", "window": 8, "workers": 2,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(old, indent=2, sort_keys=True))
    # asked with the settings the folder was written with (η and λ_max were the defaults then, not now)
    asked = SimConfig(
        artifacts="/a/art", rounds=3, lam="auto", lam_max=0.9, eta=1e-3, local_lr=0.0, workers=1, model="smollm2",
        train_data="/d/train.tsv", public_data="/d/dev.tsv", test_data="/d/test.tsv", command="another", blocks="each",
    )  # fmt: skip
    kept = save_or_check_config(tmp_path, asked)
    assert kept.workers == 1 and kept.command == old["command"] and json.loads(kept.to_json())["rounds"] == 3
    # the retired v1 field (alpha) is dropped; the fields the folder was written with are kept, not today's defaults
    assert kept.run_config(8) == RunConfig(
        rounds=3, lam="auto", lam_max=0.9, eta=1e-3, quorum=5, min_devices=5, deadline_s=21600.0
    )
    assert not hasattr(kept, "alpha")
    # today's defaults are another run: the folder refuses them instead of resuming under other settings
    with pytest.raises(ValueError, match=r"holds another simulation \(lam_max: 0.9 here vs 1.0 asked\)"):
        save_or_check_config(tmp_path, replace(asked, lam_max=RunConfig().lam_max))


def test_options_straight_from_a_pydantic_model():
    p = argparse.ArgumentParser()
    add_config_options(p, RunConfig, ["strategy", "quorum", "min_devices", "clip_scalar"], defaults={"quorum": 8})
    by_dest = {a.dest: a for a in p._actions}
    assert by_dest["strategy"].choices == ["zgr", "zo", "bp", "cloud"]
    assert by_dest["quorum"].help == f"{RunConfig.model_fields['quorum'].description} (default 8)"
    assert by_dest["clip_scalar"].help == RunConfig.model_fields["clip_scalar"].description  # None: no default shown
    args = p.parse_args(["--min-devices", "5", "--clip-scalar", "2"])
    # one option is checked alone: min_devices > the default quorum is the whole config's business, not this option's
    assert (args.strategy, args.quorum, args.min_devices, args.clip_scalar) == ("zgr", 8, 5, 2.0)
    with pytest.raises(SystemExit):
        p.parse_args(["--clip-scalar", "0"])
