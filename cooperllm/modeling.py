"""Torch side of the task: LoRA injection and the classification loss f(input_ids, attention_mask, labels; θ).

This one module is what the exporter traces, what the cloud backpropagates and what the eager reference runs,
so every side computes the same function.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cooperllm.adapter import HEAD_PREFIX, AdapterSpec, layout_for
from cooperllm.checkpoint import load_theta
from cooperllm.layout import ParamLayout
from cooperllm.tasks import SEQ_CLS, TaskSpec
from cooperllm.tokenization import EncodedBatch, PromptEncoder

# Neutral sentences whose prompts' mean last hidden state centres the seq-cls head's input (see ClassifierLoss).
# Fixed here, not drawn from anyone's data, so the exporter, the cloud and the eager reference compute the same centre.
CENTERING_TEXTS = (
    "the weather was mild for most of the week .",
    "she opened the door and walked into the kitchen .",
    "prices rose slowly over the last quarter .",
    "the committee will meet again on tuesday .",
    "a small boat drifted along the quiet river .",
    "he read the letter twice before answering .",
    "the software update fixed several minor bugs .",
    "children played in the park until sunset .",
)


class LoRALinear(nn.Module):
    """base(x) + (α/r)·B(A(x)); parameter names follow PEFT (``base_layer``, ``lora_A.weight``, ``lora_B.weight``)."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


def inject_lora(model: nn.Module, spec: AdapterSpec) -> list[str]:
    """Replace every nn.Linear whose name ends with a target by a LoRALinear; returns the wrapped module names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in spec.targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, spec.rank, spec.scaling))
            wrapped.append(name)
    found = {n.rsplit(".", 1)[-1] for n in wrapped}
    missing = [t for t in spec.targets if t not in found]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"LoRA targets {missing} match no linear module; this model has {linear}")
    return wrapped


def init_lora(model: nn.Module, seed: int) -> None:
    """PEFT's default: A ~ Kaiming-uniform(a=√5), B = 0, from a seeded generator (so θ₀ is reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("lora_A.weight"):
            bound = 1.0 / math.sqrt(p.shape[1])  # kaiming_uniform with a=√5 reduces to U(-1/√fan_in, 1/√fan_in)
            with torch.no_grad():
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
        elif name.endswith("lora_B.weight"):
            with torch.no_grad():
                p.zero_()


# Families whose positions are learned absolute embeddings: under left padding a row's first real token must still sit
# at position 0, so their position ids come from the attention mask. (Rotary families see only relative positions, so
# their default 0…L−1 positions give the same attention up to rounding, and stay as they are.)
ABSOLUTE_POSITIONS = frozenset({"gpt2"})


class ClassifierLoss(nn.Module):
    """(mean CE loss, label logits) from the last position's hidden state.

    ``causal-lm-cls`` scores the label words with the (frozen) output embedding rows; ``seq-cls`` uses a trainable
    linear head named ``score`` (zero-initialised: chance at start) on the last hidden state minus a fixed centre.

    Why the centre: the last position is the template's last token, so its hidden state is dominated by one
    input-independent vector (for SmolLM2 its norm is ~42 of ~44). An uncentred head is then so ill-conditioned
    that zeroth-order steps barely move it (measured: chance after 1,000 simulated SPSA steps, ~72 % centred).
    """

    def __init__(self, lm: nn.Module, task: TaskSpec, label_token_ids: list[int], head_center=None):
        super().__init__()
        self.lm = lm
        self.task = task
        self.label_token_ids = list(label_token_ids)
        hidden = lm.config.hidden_size
        if task.mode == SEQ_CLS:
            if head_center is None or tuple(head_center.shape) != (hidden,):
                raise ValueError(f"a seq-cls head needs a centre of shape ({hidden},)")
            setattr(self, HEAD_PREFIX, nn.Linear(hidden, task.num_classes))
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)
            self.register_buffer("head_center", head_center.detach().clone(), persistent=False)
        else:
            out = lm.get_output_embeddings()
            rows = out.weight.detach()[self.label_token_ids].clone()
            bias = out.bias.detach()[self.label_token_ids].clone() if getattr(out, "bias", None) is not None else None
            self.register_buffer("label_rows", rows)
            self.register_buffer("label_bias", bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        last = last_hidden(self.lm, input_ids, attention_mask)
        if self.task.mode == SEQ_CLS:
            logits = self.score(last - self.head_center)
        else:
            logits = last @ self.label_rows.T
            if self.label_bias is not None:
                logits = logits + self.label_bias
        return F.cross_entropy(logits, labels), logits


def last_hidden(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last position's hidden state (the template's last token under left padding), (B, hidden)."""
    extra = {}
    if lm.config.model_type in ABSOLUTE_POSITIONS:
        extra["position_ids"] = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)
    out = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    return out.last_hidden_state[:, -1, :]


def head_center(lm: nn.Module, encoder: PromptEncoder) -> torch.Tensor:
    """Mean last hidden state of the CENTERING_TEXTS prompts (the LM frozen, LoRA at its B = 0 start)."""
    batch = encoder.encode(list(CENTERING_TEXTS), np.zeros(len(CENTERING_TEXTS), dtype=np.int64))
    with torch.inference_mode():
        last = last_hidden(lm, torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    return last.float().mean(0).clone()


def build_task_model(
    lm: nn.Module, encoder: PromptEncoder, adapter: AdapterSpec | None
) -> tuple[ClassifierLoss, ParamLayout]:
    """Freeze the LM, add LoRA (if any; AUTO targets resolved for the model's family) and the task head; return the
    loss module and the θ layout."""
    task = encoder.task
    for p in lm.parameters():
        p.requires_grad_(False)
    if adapter is not None:
        adapter = adapter.for_family(lm.config.model_type)
        inject_lora(lm, adapter)
        init_lora(lm, adapter.init_seed)
    center = head_center(lm, encoder) if task.mode == SEQ_CLS else None
    module = ClassifierLoss(lm, task, encoder.label_token_ids, center)
    trainable = [(n, tuple(p.shape)) for n, p in module.named_parameters() if _is_trainable(n)]
    for n, p in module.named_parameters():
        p.requires_grad_(_is_trainable(n))
    module.eval()
    return module, layout_for(trainable)


def _is_trainable(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.startswith(f"{HEAD_PREFIX}.")


def theta_from_module(module: nn.Module, layout: ParamLayout) -> np.ndarray:
    params = dict(module.named_parameters())
    return layout.flatten({n: params[n].detach().cpu().numpy() for n in layout.names})


def theta_to_tensors(theta: np.ndarray, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Tensors sharing memory with θ, ready for ``torch.func.functional_call``."""
    return {n: torch.from_numpy(v) for n, v in layout.unflatten(theta).items()}


def forward_at(
    module: nn.Module, layout: ParamLayout, batch: EncodedBatch, theta: np.ndarray
) -> tuple[float, np.ndarray]:
    """(mean CE loss, label logits) of the loss module at θ, swapped in with ``functional_call`` (the module's own
    parameters untouched): the eager counterpart of a graph backend's ``run``, so ``cooperllm.evaluate`` takes both."""
    with torch.inference_mode():
        loss, logits = torch.func.functional_call(
            module,
            theta_to_tensors(theta, layout),
            (
                torch.from_numpy(batch.input_ids),
                torch.from_numpy(batch.attention_mask),
                torch.from_numpy(batch.labels),
            ),
            strict=False,
        )
    return float(loss), logits.numpy().copy()


def load_theta_into(module: nn.Module, layout: ParamLayout, path: str) -> np.ndarray:
    """Copy θ from a safetensors file into the module's trainable parameters."""
    theta = load_theta(path, layout)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in theta_to_tensors(theta, layout).items():
            params[name].copy_(value)
    return theta
