import json
import os
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


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--seq-len", "16"], {}, "--seq-len 16 contradicts"),
        ([], {"COOPERLLM_TASK": "seq-cls"}, "--task 'seq-cls' contradicts"),
    ],
)
def test_a_setting_that_contradicts_the_manifest_is_refused(tiny_artifacts, tmp_path, args, env, message):
    """The manifest defines the task: serve refuses an explicit contradiction in one line instead of dropping it."""
    serve = ["serve", "--artifacts", str(tiny_artifacts), "--port", "0", "--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", *serve, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "leave it out" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_predict_refuses_an_adapter_of_another_layout_in_one_line(tiny_artifacts, tmp_path):
    adapter = tmp_path / "other.safetensors"
    adapter.write_bytes(b"not safetensors")
    proc = _cli("predict", "--artifacts", str(tiny_artifacts), "--adapter", str(adapter), "a text", check=False)
    assert proc.returncode == 2
    assert "not a readable safetensors file" in proc.stderr and "Traceback" not in proc.stderr
