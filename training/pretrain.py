"""Recipe: teach an LLM to hear: sound tokens → transcript (ASR), the first stage of a speech LLM.

    auralm train pretrain --config pretrain tokenizer=runs/tokenizer/tokenizer train=data/train.jsonl
    torchrun --nproc_per_node 4 -m auralm train pretrain --config pretrain …   (FSDP2, same global batch)

Each example becomes the conversation `SpeechChat.transcribe` holds at inference: a user turn with the clip
and `prompt` (default "Transcribe the speech."), rendered by the LLM's own chat template, then the
transcript as the assistant's turn, the only tokens with a loss (plus its end-of-turn marker). The clip's
sound tokens come from a token export (train= an `auralm export` folder; or an `auralm tokenize --format
jsonl` file with texts= its transcripts) or are computed by the speech tokenizer once and cached. What trains, and the outputs: see llm_recipe.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auralm.data import read_examples
from auralm.data.export import EXPORT_FILE, export_info
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT
from auralm.training.audio_dataset import SkippedExamples
from auralm.training.chat_dataset import Conversation, user_turn
from auralm.training.config import ConfigError
from auralm.training.llm_recipe import LLMRecipe, LLMTrainingConfig
from auralm.training.loop import run_recipe


@dataclass
class PretrainConfig(LLMTrainingConfig):
    output_dir: str = "runs/pretrain"
    train: str = ""  # a manifest, folder, datasets folder, Parquet file or sound-token export (see read_examples)
    texts: str | None = None  # a token export's transcripts (for an export DIR: a subset)
    prompt: str = TRANSCRIBE_PROMPT  # the user's request beside the clip


class Transcripts:
    """Every example of train= as a transcription conversation (a `ConversationSource`)."""

    def __init__(self, config: PretrainConfig):
        if not config.train:
            raise ConfigError(
                "no training data: set train= (a manifest, folder, datasets folder, Parquet file or token export)"
            )
        self.config = config

    def conversations(self, recipe: LLMRecipe) -> tuple[list[Conversation], SkippedExamples]:
        c, speech = self.config, recipe.speech
        examples = read_examples(c.train, texts=c.texts)
        if (Path(c.train) / EXPORT_FILE).is_file():
            exported_with = export_info(c.train)["tokenizer_hash"]
            if exported_with != speech.tokenizer_hash:
                raise ConfigError(
                    f"train={c.train}: exported with another speech tokenizer ({exported_with[:12]}…) than this "
                    f"run's ({speech.tokenizer_hash[:12]}…); export again with it, or set tokenizer= to that one"
                )
        codes, skipped = recipe.code_cache.build(examples, recipe.world, num_workers=c.num_workers,
                                                 progress=recipe.progress)  # fmt: skip
        first = np.random.default_rng([c.seed, 4]).random(len(examples)) < c.instruction_first
        conversations = [
            [user_turn(clip, c.prompt, before), {"role": "assistant", "content": example.text}]
            for example, clip, before in zip(examples, codes, first, strict=True)
            if clip is not None
        ]
        return conversations, skipped


def recipe(config: PretrainConfig, resume: bool = False) -> LLMRecipe:
    return LLMRecipe("pretrain", config, Transcripts(config), resume)


def run(config: PretrainConfig, resume: bool = False) -> int:
    return run_recipe(recipe(config, resume))


CONFIG = PretrainConfig
