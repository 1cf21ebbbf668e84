"""Validation loss for the speech-LLM recipes (`val=`): the training objective per target token on held-out
conversations of the same kind as train='s, made by the recipe's own source from val= (so sft's val rows get
heard lines and noise clips, distill's the teacher's replies), logged to metrics.jsonl as val_loss every val_every
steps and at the end. Every rank computes the whole set (FSDP2 needs all of them in each forward), so it is meant
small: a few dozen clips take seconds. Choose checkpoints by it; report on the test split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace

import torch
from torch.utils.data import Dataset

from auralm.training.audio_dataset import SkippedExamples
from auralm.training.chat_dataset import IGNORE, DistillBatch, TokenBatch, packed_conversations


class ValidationSet:
    """Held-out rows, batched in order: `loss(loss_sum)` is the mean loss per target token over all of them."""

    def __init__(self, rows: Dataset, collate: Callable, batch_size: int, pad_id: int):
        self.rows, self.collate, self.batch_size, self.pad_id = rows, collate, batch_size, pad_id

    @classmethod
    def of(cls, recipe) -> ValidationSet:
        """The validation set of an LLMRecipe whose config names val=: its source's conversations of that data."""
        c = recipe.config
        # a seed of its own: its draws (part orders, noise clips) are not training's
        settings = {"train": c.val, "seed": c.seed + 1}
        if "texts" in {f.name for f in fields(c)}:  # a token export's transcripts are train='s
            settings["texts"] = None
        conversations, _ = type(recipe.data)(replace(c, **settings)).conversations(recipe)
        rows, collate, _ = packed_conversations(
            conversations, recipe.tokenizer, c.max_tokens, c.pack, SkippedExamples()
        )
        return cls(rows, collate, c.batch_size, recipe.tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def loss(self, loss_sum: Callable[[TokenBatch | DistillBatch], torch.Tensor]) -> float:
        """The mean of `loss_sum` (a batch's loss summed over its target tokens) per target token."""
        total, targets = 0.0, 0
        for start in range(0, len(self.rows), self.batch_size):
            batch = self.collate([self.rows[i] for i in range(start, min(start + self.batch_size, len(self.rows)))],
                                 pad_id=self.pad_id)  # fmt: skip
            total += float(loss_sum(batch))
            targets += int((batch.targets != IGNORE).sum())
        return total / targets
