"""θ → a PEFT LoRA adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``): the cloud's zipped
download and ``cooperllm adapter export``.

Our LoRA tensors are named like PEFT's (``lm.model.layers.0.self_attn.q_proj.lora_A.weight``); PEFT saves them as
``base_model.model.<name inside the causal LM>``. A ``seq-cls`` head (``score.*``) is not part of a causal-LM PEFT
adapter. It scores the *centred* last hidden state, score(h − c), and transformers' LlamaForSequenceClassification
head has no bias to fold the centre into, so it cannot be a PEFT ``modules_to_save`` either: it is written beside the
adapter as a plain linear layer with the centre folded in (:func:`folded_head`).
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


def peft_files(theta: np.ndarray, layout: ParamLayout, adapter: AdapterSpec, base_model: str) -> dict[str, bytes]:
    """The two files of a PEFT adapter folder, by name."""
    return {
        "adapter_model.safetensors": save(peft_tensors(theta, layout), metadata={"format": "pt"}),
        "adapter_config.json": json.dumps(peft_config(adapter, base_model), indent=1).encode(),
    }


def peft_zip(theta: np.ndarray, layout: ParamLayout, adapter: AdapterSpec, base_model: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in peft_files(theta, layout, adapter, base_model).items():
            zf.writestr(name, data)
    return buf.getvalue()


def folded_head(theta: np.ndarray, layout: ParamLayout, center: np.ndarray) -> dict[str, np.ndarray]:
    """The seq-cls head as a plain linear layer on the last position's hidden state h: score(h − c) = W·h + (b − W·c),
    computed in float64, stored as float32."""
    tensors = layout.unflatten(theta)
    weight = tensors[f"{HEAD_PREFIX}.weight"].astype(np.float64)
    bias = tensors[f"{HEAD_PREFIX}.bias"].astype(np.float64) - weight @ center.astype(np.float64)
    return {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}
