"""What the LLM as loaded (before anything trains) replies to text prompts: asked once, kept in the run folder.

sft's `text_replies=base` (text answers kept by self-distillation) and distill's teacher replies come from here.
Replies are keyed by the prompt's JSON and saved after every batch, so a kill loses at most one batch and a
resumed run asks for none it has. Rank 0 asks; every rank reads the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from auralm.files import write_text_atomically

if TYPE_CHECKING:
    from auralm.training.llm_recipe import LLMRecipe

Prompt = list[dict[str, str]]  # messages with string contents, ending with the user's turn
REPLY_BATCH = 16  # prompts the LLM answers at once, by default (a GPU takes hundreds)


class BaseReplies:
    def __init__(self, recipe: LLMRecipe, file: Path, max_new_tokens: int, batch: int | None = None):
        self.recipe, self.file, self.max_new_tokens, self.batch = recipe, file, max_new_tokens, batch

    def __call__(self, prompts: list[Prompt], desc: str = "base replies") -> list[str]:
        """The reply to each prompt, asking the LLM for those not kept yet."""
        keys = [json.dumps(prompt, ensure_ascii=False) for prompt in prompts]
        replies: dict[str, str] = json.loads(self.file.read_text()) if self.file.is_file() else {}
        missing = list(dict.fromkeys(key for key in keys if key not in replies))
        world = self.recipe.world
        if world.is_main and missing:
            size = self.batch or REPLY_BATCH
            for start in tqdm(range(0, len(missing), size), desc=desc, disable=not self.recipe.progress):
                batch = missing[start : start + size]
                replies |= dict(zip(batch, self.generate([json.loads(k) for k in batch]), strict=True))
                write_text_atomically(self.file, json.dumps(replies, ensure_ascii=False, indent=0))
        world.barrier()
        if missing:
            replies = json.loads(self.file.read_text())
        return [replies[key] for key in keys]

    def generate(self, prompts: list[Prompt]) -> list[str]:
        """Greedy replies of the LLM as loaded to a batch of prompts."""
        recipe = self.recipe
        tokenizer, model = recipe.tokenizer, recipe.llm.to(recipe.world.device).eval()
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=False, max_new_tokens=self.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        replies = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [reply.strip() for reply in replies]
