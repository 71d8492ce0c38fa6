import json
import subprocess
import sys

import pytest

from cooperllm_app.cli import build_parser


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", *args], capture_output=True, text=True, check=check, timeout=300
    )


def test_help_lists_every_command_and_option():
    top = _cli("--help").stdout
    for command in ("eval", "bench", "demo"):
        assert command in top
    ev = _cli("eval", "--help").stdout
    for option in ("--model", "--data", "--task", "--template", "--label-words", "--seq-len", "--batch-size"):
        assert option in ev


def test_every_option_has_help_text():
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
            elif action.dest != "help" and action.option_strings:
                assert action.help, f"{p.prog} {action.option_strings} has no help"


def test_eval_on_a_tiny_model_prints_accuracy(tiny_model_dir, sst2_dir):
    out = _cli(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(sst2_dir / "test.tsv"),
        "--limit",
        "40",
        "--seq-len",
        "32",
        "--json",
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n"] == 40 and 0.0 <= result["accuracy"] <= 1.0 and result["loss"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--model", "/nonexistent"], "does not exist"),
        (["eval", "--model", "{model}", "--data", "/nonexistent.tsv"], "no such data file"),
        (["eval", "--model", "{model}", "--seq-len", "0"], "seq_len"),
    ],
)
def test_bad_input_gives_a_clear_error(tiny_model_dir, args, message):
    args = [a.replace("{model}", str(tiny_model_dir)) for a in args]
    proc = _cli(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
