"""One plain Hugging Face model folder from a speech LLM, for engines that know nothing of auralm.

Sound tokens are ordinary vocabulary (early fusion), so an LLM with its speech adapter merged (LoRA folded into
the weights, the sound tokens' embedding rows in place) is an ordinary causal LM: vLLM, TGI, llama.cpp's
converter or `transformers serve` load the folder as they load any Llama-family model, and audio reaches them as
sound-token text (`auralm tokenize --format string`). config.json keeps the speech tokenizer's hash, so auralm
(`SpeechChat.from_pretrained(llm=folder)`) still refuses to pair the folder with another speech tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from auralm.checkpoints import shipped_model
from auralm.checkpoints.registry import SHIPPED_ADAPTER
from auralm.errors import AuralmError
from auralm.lm.loading import load_llm
from auralm.lm.vocabulary import HASH_KEY

SOUND_PREFIX = "<|sound_"  # <|sound_start|>, <|sound_end|> and every <|sound_NNNN|>


class MergeError(AuralmError):
    """A merged model that cannot be written where asked, or that would hear nothing."""


def merge_speech_llm(
    llm: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `out`: the LLM with the adapter merged, its tokenizer (sound tokens, chat template) and configs.

    llm, adapter: as `load_llm` takes them; with neither, the shipped speech model (the packaged SmolLM2 and the
    shipped adapter), as `SpeechChat.from_pretrained()` picks it. dtype: of the saved weights; the merge itself
    runs in float32. The folder is written beside `out` and renamed at the end, so a kill leaves none half
    written. Raises MergeError for an `out` that holds anything, or an LLM without sound tokens.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"{out}: already exists and is not empty; name a new folder, or delete this one first")
    if llm is None and adapter is None:
        adapter = shipped_model(SHIPPED_ADAPTER)
    model, tokenizer = load_llm(llm, adapter=adapter)  # float32: LoRA folds in without rounding
    if not sound_token_count(tokenizer):
        raise MergeError(
            f"{llm or 'the default LLM'}: has no sound tokens, so the merged model could not hear; "
            "name the speech adapter `auralm train pretrain|sft` wrote with --adapter"
        )
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed merge left
    try:
        model.to(dtype).save_pretrained(partial)  # config.json (with the tokenizer hash), generation_config.json
        tokenizer.save_pretrained(partial)
        readable_by_transformers_4(partial)
        if out.exists():  # an empty folder: the rename replaces it
            out.rmdir()
        partial.rename(out)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise MergeError(f"{out}: cannot write the merged model ({e.strerror or e})") from e
    return out


def readable_by_transformers_4(folder: Path) -> None:
    """Write the keys transformers 4 reads beside (or for) transformers 5's, which reads both: many engine releases
    pin 4.x, which otherwise refuses the tokenizer and silently takes the rotary base as 10,000 (SmolLM2's is
    100,000)."""
    config = json.loads((folder / "config.json").read_text())
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # one global dict, not one per layer type
        legacy = {"rope_theta", "partial_rotary_factor"}  # top-level keys in 4.x; the rest is its rope_scaling
        config |= {key: rope[key] for key in legacy & rope.keys() if key not in config}
        scaling = {key: value for key, value in rope.items() if key not in legacy}
        config.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":  # 5.x's name for the class 4.x knows as
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"  # this one
    if isinstance(tokenizer_config.get("extra_special_tokens"), list):  # 4.x wants a dict there; the list was:
        tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def sound_token_count(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many sound tokens (start, end and one per code) the tokenizer holds."""
    return sum(token.startswith(SOUND_PREFIX) for token in tokenizer.get_added_vocab())


def describe_merged(folder: str | os.PathLike) -> str:
    """A few lines on a merged folder as written: parameters, vocabulary, size on disk, speech tokenizer hash."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    parameters = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as weights:
            parameters += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return "\n".join(
        [
            f"merged speech LLM: {folder}",
            f"  {parameters:,} parameters ({config.get('dtype', '?')}), {size / 1e6:,.1f} MB on disk",
            f"  vocabulary {len(tokenizer):,} tokens, {sound_token_count(tokenizer)} of them sound tokens",
            f"  speech tokenizer hash {config.get(HASH_KEY) or 'not recorded'}",
        ]
    )
