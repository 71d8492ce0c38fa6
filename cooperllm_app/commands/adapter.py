"""``cooperllm adapter export``: a trained θ as files the Hugging Face ecosystem loads.

The LoRA part becomes a PEFT adapter folder that ``peft.PeftModel.from_pretrained`` loads onto the base model the
artifacts were exported from (its local folder is named in ``adapter_config.json``). A seq-cls head becomes
``classifier_head.safetensors``, a plain linear layer on the last position's hidden state (cooperllm.peft_export says
why it is not a PEFT module). ``cooperllm_task.json`` records what a caller needs to score like the device: the prompt
template, the class names, the label token ids, the sequence length and left padding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cooperllm.checkpoint import atomic_write_bytes, load_theta
from cooperllm.manifest import read_manifest
from cooperllm.models import TOKENIZER_FILE, load_causal_lm, resolve_model
from cooperllm.peft_export import folded_head, peft_files
from cooperllm.tasks import SEQ_CLS

HEAD_FILE = "classifier_head.safetensors"
TASK_FILE = "cooperllm_task.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapter", help="convert a trained adapter: PEFT folder (and the seq-cls head)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    e = verbs.add_parser(
        "export",
        help="write a PEFT adapter folder (plus the seq-cls head) that peft.PeftModel.from_pretrained loads",
        description="Write OUT/adapter_model.safetensors and OUT/adapter_config.json (PEFT LoRA, base model: the "
        f"folder the artifacts came from), {HEAD_FILE} for a seq-cls task (logits = W·h + b on the last position's "
        f"final hidden state), and {TASK_FILE} (template, classes, label token ids, sequence length).",
    )
    e.add_argument("--artifacts", required=True, help="the artifact folder the adapter was trained with")
    e.add_argument("--adapter", required=True, help="trained θ (safetensors), e.g. RUN_DIR/adapter.safetensors")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument(
        "--base-model", help="the base model's folder (default: the one the manifest names; smollm2's cache folder)"
    )
    e.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.artifacts, verify_hashes=True)
    theta = load_theta(args.adapter, manifest.layout)
    model_dir = resolve_model(args.base_model or manifest.model_name).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if manifest.adapter is not None:
        for name, data in peft_files(theta, manifest.layout, manifest.adapter, str(model_dir)).items():
            atomic_write_bytes(out / name, data)
            written.append(name)
    task = manifest.task
    if task.mode == SEQ_CLS:
        from safetensors.numpy import save

        center = head_center_of(model_dir, manifest)
        atomic_write_bytes(out / HEAD_FILE, save(folded_head(theta, manifest.layout, center)))
        written.append(HEAD_FILE)
    doc = {
        "base_model": str(model_dir),
        "task": task.to_dict(),
        "label_token_ids": list(manifest.label_token_ids),
        "seq_len": manifest.graphs[0].seq_len,
        "padding": "left",
        "pad_token_id": manifest.pad_token_id,
        "scores": "the last position's final hidden state: "
        + (f"{HEAD_FILE} (W·h + b)" if task.mode == SEQ_CLS else "the LM head's logits of label_token_ids"),
    }
    atomic_write_bytes(out / TASK_FILE, (json.dumps(doc, indent=1) + "\n").encode())
    written.append(TASK_FILE)
    print(f"wrote {out}: {', '.join(written)}")
    print(
        f"load with: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(model_dir)!r}), {str(out)!r})"
    )
    return 0


def head_center_of(model_dir: Path, manifest):
    """The centre the exported head subtracts: the base model's mean last hidden state over the centring prompts,
    computed exactly as the exporter did (cooperllm.modeling.head_center)."""
    from cooperllm.modeling import head_center  # deferred: loads torch
    from cooperllm.tokenization import PromptEncoder

    encoder = PromptEncoder(model_dir / TOKENIZER_FILE, manifest.task, manifest.graphs[0].seq_len)
    return head_center(load_causal_lm(model_dir), encoder).numpy()
