"""θ → a PEFT LoRA adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``), zipped for download.

Our LoRA tensors are named like PEFT's (``lm.model.layers.0.self_attn.q_proj.lora_A.weight``); PEFT saves them as
``base_model.model.<name inside the causal LM>``. A ``seq-cls`` head (``score.*``) is not part of a causal-LM PEFT
adapter and is left out (the full adapter download keeps it).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
from safetensors.numpy import save

from cooperllm.adapter import HEAD_PREFIX, AdapterSpec
from cooperllm.layout import ParamLayout

LM_PREFIX = "lm."
PEFT_PREFIX = "base_model.model."


def peft_tensors(theta: np.ndarray, layout: ParamLayout) -> dict[str, np.ndarray]:
    out = {}
    for name, value in layout.unflatten(theta).items():
        if name.startswith(f"{HEAD_PREFIX}."):
            continue
        if not name.startswith(LM_PREFIX):
            raise ValueError(f"tensor {name} is not inside the language model; cannot export it as PEFT")
        out[PEFT_PREFIX + name[len(LM_PREFIX) :]] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def peft_config(adapter: AdapterSpec, base_model: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "target_modules": sorted(adapter.targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }


def peft_zip(theta: np.ndarray, layout: ParamLayout, adapter: AdapterSpec, base_model: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_model.safetensors", save(peft_tensors(theta, layout), metadata={"format": "pt"}))
        zf.writestr("adapter_config.json", json.dumps(peft_config(adapter, base_model), indent=1))
    return buf.getvalue()
