"""The LLM recipes' other kind of adapter: the LLM widened for sound (`widen_dims=`; lm/widening.py), whose
new weights text cannot reach, so that merged it answers text exactly as the base LLM does.

Only some entries of a widened weight train (a q_proj's new columns, not its old ones): each such parameter
requires grad whole and `MaskedGradients` zeroes the rest of its gradient before clipping and the optimizer step.
With no weight decay, Adam then never moves them (zero gradient, zero moments, zero update). The masks are plain
tensors the size of their parameters, so a widened run is one process; FSDP2's shards would need sharded masks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from auralm.checkpoints import CheckpointError
from auralm.lm.widening import WIDENING_FILE, Widening, load_widening, read_widening, trainable_masks, widen
from auralm.training.config import ConfigError


class MaskedGradients:
    """The widened model's trainable entries, and `apply()` to zero every other entry's gradient."""

    def __init__(self, model: torch.nn.Module, widening: Widening):
        masks = trainable_masks(model, widening)
        self.pairs = [(p, masks[name]) for name, p in model.named_parameters() if name in masks]
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in masks)

    def apply(self) -> None:
        for parameter, mask in self.pairs:
            if parameter.grad is not None:
                parameter.grad.mul_(mask)

    @property
    def trainable(self) -> int:
        """How many entries train."""
        return sum(int(mask.sum()) for _, mask in self.pairs)


def widened_llm(
    llm: PreTrainedModel, first_sound: int, config, world_size: int
) -> tuple[PreTrainedModel, Widening, MaskedGradients]:
    """(the widened LLM, its Widening, its gradient masks) for an LLM recipe's `config`: widened anew by
    widen_dims / widen_neurons / widen_heads, or, with adapter= a widened adapter folder, as that one left it."""
    for setting in ("full", "lora_quiet"):
        if getattr(config, setting):
            raise ConfigError(f"widen_dims: {setting} is for the other kinds of training; leave it unset")
    if world_size > 1:
        raise ConfigError("widen_dims: a widened run is one process (its gradient masks are not sharded)")
    if config.weight_decay:
        raise ConfigError("widen_dims: weight_decay must be 0 (decay would move the entries that must stay)")
    try:
        if config.adapter:
            widening = read_widening(Path(config.adapter))
            model = load_widening(llm, Path(config.adapter))
        else:
            widening = Widening.of(llm.config, config.widen_dims, config.widen_neurons, config.widen_heads, first_sound)
            model = widen(llm, widening, config.seed)
    except CheckpointError as e:
        raise ConfigError(f"widen_dims: {e}") from e
    return model, widening, MaskedGradients(model, widening)


def is_widened(adapter: str | None) -> bool:
    """Whether adapter= names a widened adapter folder (not a LoRA one)."""
    return adapter is not None and (Path(adapter) / WIDENING_FILE).is_file()
