"""Tiny random models for tests (Llama by default; Qwen2, Gemma, Phi-3, GPT-2): real code paths, built in a second,
no download.

``python -m cooperllm.tiny DIR`` writes one for trying the whole pipeline in seconds (docs/QUICKSTART.md): it is
random, so it learns nothing worth keeping.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cooperllm.models import TESTED_FAMILIES
from cooperllm.tasks import SST2_LABEL_WORDS

_CORPUS = [
    "review : a charming and often affecting journey . sentiment : positive",
    "review : unflinchingly bleak and desperate . sentiment : negative",
    "the film is good , funny and smart , the best of the year",
    "the movie is bad , dull and boring , the worst of the year",
    "it 's a great , warm , moving story with fine acting",
    "it 's an awful , tedious , lifeless mess with poor writing",
]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer in which the SST-2 label words are single tokens."""

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _CORPUS * 20 + ["Review: x\nSentiment:" + w for w in SST2_LABEL_WORDS] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    for word in SST2_LABEL_WORDS:
        if len(tok.encode(word).ids) != 1:
            raise RuntimeError(f"tiny tokenizer splits label word {word!r}")
    return tok


FAMILIES = TESTED_FAMILIES


def _tiny_config(family: str, vocab_size: int, hidden_size: int, num_layers: int):
    """A small config of ``family`` (GQA where the family has it, tied embeddings, 4 heads)."""
    import transformers  # deferred: loads transformers (heavy; not needed at import)

    ids = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=256, **ids)
    decoder = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **ids,
    )
    if family == "llama":
        return transformers.LlamaConfig(**decoder)
    if family == "qwen2":
        return transformers.Qwen2Config(**decoder)
    if family == "gemma":
        return transformers.GemmaConfig(head_dim=hidden_size // 4, **decoder)
    if family == "phi3":
        return transformers.Phi3Config(original_max_position_embeddings=256, **decoder)
    raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")


def make_tiny_model(
    out_dir: str | os.PathLike,
    family: str = "llama",
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Save a random causal LM of ``family`` (FAMILIES) with its tokenizer.json into ``out_dir``."""
    import torch  # deferred: loads torch (heavy; not needed at import)
    from transformers import AutoModelForCausalLM  # deferred: loads transformers (heavy; not needed at import)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(vocab_size)
    config = _tiny_config(family, vocab_size, hidden_size, num_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    return out


def make_tiny_llama(out_dir: str | os.PathLike, seed: int = 0, **kwargs) -> Path:
    """A tiny random Llama (tied embeddings, GQA): the test suite's default model."""
    return make_tiny_model(out_dir, "llama", seed, **kwargs)


if __name__ == "__main__":
    import argparse

    from cooperllm.console import quiet_third_party

    quiet_third_party()
    parser = argparse.ArgumentParser(prog="python -m cooperllm.tiny", description="write a tiny random model folder")
    parser.add_argument("out", help="folder to write (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--family", default="llama", choices=FAMILIES, help="architecture (default llama)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args()
    print(make_tiny_model(args.out, args.family, seed=args.seed))
