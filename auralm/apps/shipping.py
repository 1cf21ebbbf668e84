"""Make trained models the package's shipped defaults (checkpoints/shipped/): compact, and pinned to each other
(`auralm ship`, apps/ship.py).

    auralm ship tokenizer runs/tokenizer/tokenizer   # first: the LLM trains on the shipped copy
    auralm ship adapter runs/sft/adapter             # then: its adapter, trained with tokenizer=default

Weights are stored in float16. The tokenizer is rounded before it is saved, so the hash it records is the one it
loads with; train the LLM with `tokenizer=default` so that the adapter's recorded hash is that one too (an
adapter trained on other codes is refused). Both together must stay within SHIPPED_BUDGET_MB, as they live in git.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from auralm.checkpoints import CheckpointError
from auralm.checkpoints.registry import SHIPPED_ADAPTER, SHIPPED_DIR, SHIPPED_TOKENIZER
from auralm.lm.loading import DEFAULT_LLM, SOUND_TOKENS_FILE
from auralm.lm.vocabulary import HASH_KEY
from auralm.lm.widening import WIDENING_FILE, WIDENING_WEIGHTS
from auralm.tokenizer import SpeechTokenizer

SHIPPED_BUDGET_MB = 25
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
LEFT_BEHIND = {"README.md"}  # peft's generated card; the shipped card is checkpoints/shipped/README.md


def ship_tokenizer(source: str | Path, into: Path = SHIPPED_DIR) -> Path:
    """Copy a trained speech tokenizer into `into`/speech-tokenizer in float16; returns that folder."""
    tokenizer = SpeechTokenizer.from_pretrained(source)
    return _replace(into / SHIPPED_TOKENIZER, lambda tmp: tokenizer.save_pretrained(tmp, dtype=torch.float16))


def ship_adapter(source: str | Path, into: Path = SHIPPED_DIR) -> Path:
    """Copy a trained adapter (LoRA or widened) into `into`/speech-smollm2 in float16, once its recorded speech
    tokenizer is the one shipped in `into`; returns that folder."""
    source = Path(source)
    if not (source / SOUND_TOKENS_FILE).is_file():
        raise CheckpointError(f"{source}: no {SOUND_TOKENS_FILE}; ship an adapter `auralm train pretrain|sft` wrote")
    recorded = json.loads((source / SOUND_TOKENS_FILE).read_text()).get(HASH_KEY)
    shipped = SpeechTokenizer.from_pretrained(into / SHIPPED_TOKENIZER).tokenizer_hash
    if recorded != shipped:
        raise CheckpointError(
            f"{source}: trained on speech tokenizer {str(recorded)[:12]}…, not the shipped one ({shipped[:12]}…); "
            "train it with tokenizer=default"
        )

    widened = (source / WIDENING_FILE).is_file()  # an LLM widened for sound (lm/widening.py), not LoRA
    weights_file = WIDENING_WEIGHTS if widened else ADAPTER_WEIGHTS

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        for path in source.iterdir():
            if path.is_file() and path.name not in LEFT_BEHIND | {weights_file, ADAPTER_CONFIG}:
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
