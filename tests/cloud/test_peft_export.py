"""The PEFT export loads with peft.PeftModel.from_pretrained and reproduces the server's θ logits."""

from __future__ import annotations

import numpy as np

from cooperllm.protocol import RunConfig
from cooperllm.tokenization import PromptEncoder

from .helpers import make_reports, theta_from_bytes, wait_round


def test_peft_export_matches_server_theta(live, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    live.admin().create_run(RunConfig(strategy="zo", rounds=2, quorum=2, local_steps=1, eta_zo=0.5, deadline_s=60))
    devs = [live.device(f"p{i}") for i in range(2)]
    for i, d in enumerate(devs):
        info = d.current_round()
        d.upload_reports(info.round, make_reports(info, np.random.default_rng(i)), f"peft-{i}")
    info = wait_round(devs[0], 1)
    host = live.engine.host
    theta = theta_from_bytes(devs[0].adapter(info.round), host.layout)
    b_norm = sum(float(np.abs(v).sum()) for n, v in host.layout.unflatten(theta).items() if "lora_B" in n)
    assert b_norm > 0  # a trained adapter, not the zero-B initialisation

    out = devs[0].peft_export(tmp_path / "peft", version=info.round)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, out).eval()
    enc = PromptEncoder(tiny_model_dir / "tokenizer.json", host.task, 24)
    batch = enc.encode(["a charming and often affecting journey", "bleak and desperate"], [1, 0])
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask)
        ).logits[:, -1, :]
    peft_label = logits[:, enc.label_token_ids].numpy()
    server = host.label_logits(theta, batch.input_ids, batch.attention_mask)
    np.testing.assert_allclose(peft_label, server, rtol=1e-4, atol=1e-5)
    base_only = host.label_logits(host.theta0, batch.input_ids, batch.attention_mask)
    assert not np.allclose(server, base_only, atol=1e-6)  # the comparison can tell adapters apart
