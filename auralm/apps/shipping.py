"""Make trained models the package's shipped defaults (checkpoints/shipped/): compact, and pinned to each other
(`auralm ship`, apps/ship.py).

    auralm ship tokenizer runs/tokenizer/tokenizer   # first: the LLM trains on the shipped copy
    auralm ship adapter runs/sft/adapter             # then: its adapter, trained with tokenizer=default

Weights are stored in float16. The tokenizer is rounded before it is saved, so the hash it records is the one it
loads with; train the LLM with `tokenizer=default` so that the adapter's recorded hash is that one too (an
adapter trained on other codes is refused). The adapter's copy of the LLM's tokenizer (3.6 MB for SmolLM2) is left
out when the base LLM's, with the sound tokens added, is the same (`load_llm` rebuilds it so). Both together must
stay within SHIPPED_BUDGET_MB, as they live in git.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer

from auralm.checkpoints import CheckpointError
from auralm.checkpoints.registry import SHIPPED_ADAPTER, SHIPPED_DIR, SHIPPED_TOKENIZER
from auralm.lm.loading import DEFAULT_LLM, SOUND_TOKENS_FILE, llm_folder, rebuilt_tokenizer, sound_tokens_config
from auralm.lm.vocabulary import CODES_KEY, HASH_KEY
from auralm.lm.widening import WIDENING_FILE, WIDENING_WEIGHTS
from auralm.tokenizer import SpeechTokenizer
from auralm.tokenizer.token_format import sound_token
from auralm.training.ctc import HEAD_FILE as CTC_HEAD_FILE

SHIPPED_BUDGET_MB = 25
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
# peft's generated card (the shipped card is checkpoints/shipped/README.md); letter CTC's head, for training only
LEFT_BEHIND = {"README.md", CTC_HEAD_FILE}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"}


def ship_tokenizer(source: str | Path, into: Path = SHIPPED_DIR) -> Path:
    """Copy a trained speech tokenizer into `into`/speech-tokenizer in float16; returns that folder."""
    tokenizer = SpeechTokenizer.from_pretrained(source)
    return _replace(into / SHIPPED_TOKENIZER, lambda tmp: tokenizer.save_pretrained(tmp, dtype=torch.float16))


def ship_adapter(source: str | Path, into: Path = SHIPPED_DIR, llm: str | Path = DEFAULT_LLM) -> Path:
    """Copy a trained adapter (LoRA or widened) of `llm` into `into`/speech-smollm2 in float16, once its recorded
    speech tokenizer is the one shipped in `into`; returns that folder."""
    source = Path(source)
    if not (source / SOUND_TOKENS_FILE).is_file():
        raise CheckpointError(f"{source}: no {SOUND_TOKENS_FILE}; ship an adapter `auralm train pretrain|sft` wrote")
    recorded = sound_tokens_config(source).get(HASH_KEY)
    shipped = SpeechTokenizer.from_pretrained(into / SHIPPED_TOKENIZER).tokenizer_hash
    if recorded != shipped:
        raise CheckpointError(
            f"{source}: trained on speech tokenizer {str(recorded)[:12]}…, not the shipped one ({shipped[:12]}…); "
            "train it with tokenizer=default"
        )

    widened = (source / WIDENING_FILE).is_file()  # an LLM widened for sound (lm/widening.py), not LoRA
    weights_file = WIDENING_WEIGHTS if widened else ADAPTER_WEIGHTS
    rebuilt = TOKENIZER_FILES if _tokenizer_rebuilds(source, llm) else set()

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        for path in source.iterdir():
            if path.is_file() and path.name not in LEFT_BEHIND | rebuilt | {weights_file, ADAPTER_CONFIG}:
                shutil.copy(path, folder / path.name)
        if not widened:
            config = json.loads((source / ADAPTER_CONFIG).read_text())
            config["base_model_name_or_path"] = DEFAULT_LLM  # not the training run's folder
            (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        with safe_open(source / weights_file, "pt") as weights:
            state = {k: weights.get_tensor(k) for k in weights.keys()}
            metadata = weights.metadata()
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_file(half, folder / weights_file, metadata=metadata)

    return _replace(into / SHIPPED_ADAPTER, write)


def _tokenizer_rebuilds(adapter: Path, llm: str | Path) -> bool:
    """Whether `adapter`'s own tokenizer is the one `load_llm` rebuilds without it: `llm`'s with the sound tokens
    added (the same vocabulary, special tokens, chat template and encoding)."""
    codes = sound_tokens_config(adapter).get(CODES_KEY)
    if not codes or not (adapter / "tokenizer_config.json").is_file():
        return False
    own = AutoTokenizer.from_pretrained(adapter)
    rebuilt = rebuilt_tokenizer(AutoTokenizer.from_pretrained(llm_folder(llm)), adapter)
    probe = f"<|im_start|>user\nSay 12 words, twice!{sound_token(0)}{sound_token(codes - 1)}<|im_end|>"
    return (
        own.get_vocab() == rebuilt.get_vocab()
        and own.chat_template == rebuilt.chat_template
        and set(own.all_special_tokens) == set(rebuilt.all_special_tokens)
        and own(probe).input_ids == rebuilt(probe).input_ids
    )


def shipped_megabytes(into: Path = SHIPPED_DIR) -> float:
    return sum(p.stat().st_size for p in into.rglob("*") if p.is_file()) / 2**20


def _replace(folder: Path, write) -> Path:
    """Write the new folder beside the old one, then swap: a failure leaves the shipped model as it was."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder
