"""docs/QUICKSTART.md cannot go stale: its tiny-model block is run here line by line, as a user would paste it.

Each command runs in a fresh folder (with the repository's docs/ beside it, for the example data) through the real
``cooperllm`` entry point: export writes the artifacts, simulate starts the real cloud and device processes, predict
runs the device's graph. A command that fails, or that lets a warning reach the user's terminal, fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "QUICKSTART.md"
MARKER = "<!-- quickstart: tiny"


def tiny_block() -> list[str]:
    text = QUICKSTART.read_text(encoding="utf-8")
    start = text.index(MARKER)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, "the tiny-model block is missing after its marker"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_tiny_model_quickstart_runs_as_written(tmp_path):
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = {}
    for line in tiny_block():
        argv = shlex.split(line)
        out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{line}\n{out.stderr[-3000:]}"
        noisy = [s for s in out.stderr.splitlines() if "warning" in s.lower()]
        assert not noisy, f"{line} wrote warnings:\n" + "\n".join(noisy)
        outputs[argv[1] if argv[0] == "cooperllm" else argv[0]] = out.stdout

    manifest = json.loads((tmp_path / "tiny-news" / "manifest.json").read_text())
    assert manifest["task"]["mode"] == "seq-cls"
    assert manifest["task"]["label_names"] == ["business", "sports", "tech", "world"]  # from the headerless file
    assert manifest["task"]["label_words"] == []  # seq-cls: a head, no label words
    assert (tmp_path / "tiny-run" / "adapter.safetensors").is_file()
    assert "cooperllm predict --artifacts tiny-news --adapter" in outputs["simulate"]  # the run says how to use it
    label, probability, text = outputs["predict"].strip().split("\t")
    assert label in manifest["task"]["label_names"] and 0.25 <= float(probability) <= 1.0
    assert text == "The striker scores in the final minute"
