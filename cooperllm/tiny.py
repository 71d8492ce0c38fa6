"""Tiny random Llama models for tests: same code paths as SmolLM2, built in a second, no download.

``python -m cooperllm.tiny DIR`` writes one for trying the whole pipeline in seconds (docs/QUICKSTART.md): it is
random, so it learns nothing worth keeping.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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


def make_tiny_llama(
    out_dir: str | os.PathLike,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Save a random LlamaForCausalLM (tied embeddings, GQA) with its tokenizer.json into ``out_dir``."""
    import torch  # deferred: loads torch (heavy; not needed at import)
    from transformers import LlamaConfig, LlamaForCausalLM  # deferred: loads transformers (heavy; not needed at import)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    return out


if __name__ == "__main__":
    import argparse

    from cooperllm.console import quiet_third_party

    quiet_third_party()
    parser = argparse.ArgumentParser(prog="python -m cooperllm.tiny", description="write a tiny random Llama folder")
    parser.add_argument("out", help="folder to write (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args()
    print(make_tiny_llama(args.out, seed=args.seed))
