"""The LLM recipes' other kind of adapter: the LLM widened for sound (`widen_dims=`; lm/widening.py), whose
new weights text cannot reach, so that merged it answers text exactly as the base LLM does.

Only some entries of a widened weight train (a q_proj's new columns, not its old ones). For training, each such
layer is split (`split_widened`): its weight frozen with those entries 0, and each trainable part a parameter of its
own, added in by a product of its own (`PartedLinear`, `PartedEmbedding`). Backward then forms the gradients of the
parts only, not of whole weights, the optimizer holds only the parts (less memory; RESULTS.md, 2026-12-06), weight
decay pulls only on them, and FSDP2 shards it as any model. The parts are named `<layer>.parts.<i>`, the i-th of
`Widening.new_parts("<layer>.weight")`, and a product's factors `<layer>.products_in.<i>` / `products_out.<i>`, the
i-th of `new_products`; `widened_parts` gives them keyed as an adapter folder keeps them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from auralm.checkpoints import CheckpointError
from auralm.lm.widening import WIDENING_FILE, Widening, factor, load_widening, read_widening, widen
from auralm.training.config import ConfigError


class Parted(nn.Module):
    """A weight whose entries at `slices` (index tuples) train as the `parts` parameters; the rest is `weight`,
    frozen, with 0 at those entries."""

    def __init__(self, weight: torch.Tensor, parts: list[tuple[slice, ...]], shared: Parted | None = None):
        super().__init__()
        self.slices = parts
        if shared is not None:  # a tied output head: the embedding's frozen weight and parts, not copies
            self.weight, self.parts = shared.weight, shared.parts
            return
        frozen = weight.detach().clone()
        for part in parts:
            frozen[part] = 0
        self.weight = nn.Parameter(frozen, requires_grad=False)
        self.parts = nn.ParameterList(nn.Parameter(weight.detach()[part].clone()) for part in parts)


class PartedLinear(Parted):
    """A bias-free Linear: y = x Wᵀ, plus each part's product written into its rows, and each low-rank product's
    (the entries at `products`, trained as `products_out` @ `products_in`, from `factor` of their values).
    x: (..., in) → y: (..., out)."""

    def __init__(
        self,
        weight: torch.Tensor,
        parts: list[tuple[slice, ...]],
        shared: Parted | None = None,
        products: Sequence[tuple[slice, ...]] = (),
        rank: int = 0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(weight, parts, shared)
        self.product_slices = products
        self.products_in, self.products_out = nn.ParameterList(), nn.ParameterList()
        for product in products:
            inward, outward = factor(weight.detach()[product], rank)
            if not inward.any():  # all 0 (what writes starts so): the input side drawn, or neither factor would learn
                inward = torch.randn(inward.shape, generator=generator, dtype=inward.dtype) / math.sqrt(inward.shape[1])
            self.weight.data[product] = 0
            self.products_in.append(nn.Parameter(inward))
            self.products_out.append(nn.Parameter(outward))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        for (rows, columns), part in zip(self.slices, self.parts, strict=True):
            y[..., rows] += F.linear(x[..., columns], part)
        for (rows, columns), inward, outward in zip(
            self.product_slices, self.products_in, self.products_out, strict=True
        ):
            y[..., rows] += F.linear(F.linear(x[..., columns], inward), outward)
        return y


class PartedEmbedding(Parted):
    """An Embedding whose rows from `first` on (the sound tokens', every dim) are its one part.
    ids: (...) → (..., d)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        first = self.slices[0][0].start
        sound = (ids >= first).unsqueeze(-1)
        return F.embedding(ids, self.weight) + F.embedding((ids - first).clamp(min=0), self.parts[0]) * sound


def split_widened(model: PreTrainedModel, widening: Widening, seed: int = 0) -> PreTrainedModel:
    """`model` (widened) with every layer that has trainable parts split into frozen weight and parts, in place;
    every other weight frozen. A tied output head shares the embedding's. `seed` draws the input factors of
    products that start at 0."""
    model.requires_grad_(False)
    embedding = model.get_input_embeddings()
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding.weight
    generator = torch.Generator().manual_seed(seed)
    for name, module in list(model.named_modules()):
        parts, products = widening.new_parts(f"{name}.weight"), widening.new_products(f"{name}.weight")
        if not (parts or products) or not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        if isinstance(module, nn.Embedding):
            embedding = PartedEmbedding(module.weight, parts)
            replacement = embedding
        else:
            shared = embedding if tied and module is model.get_output_embeddings() else None
            replacement = PartedLinear(module.weight, parts, shared, products, widening.head_rank, generator)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, replacement)
    return model


def widened_parts(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parts (and products' factors) in a split `model`'s `state` ({`<layer>.parts.<i>`: tensor}) keyed as an
    adapter folder keeps them (`<layer>.weight@<i>`, `<layer>.weight@product<i>.in`); a tied head's once, under the
    embedding's name."""
    names = {name for name, parameter in model.named_parameters() if parameter.requires_grad}  # shared ones once
    return {_adapter_key(key): tensor for key, tensor in state.items() if key in names}


def _adapter_key(name: str) -> str:
    """`<layer>.parts.<i>` → `<layer>.weight@<i>`; `<layer>.products_in.<i>` → `<layer>.weight@product<i>.in`."""
    name = re.sub(r"\.parts\.(\d+)$", r".weight@\1", name)
    return re.sub(r"\.products_(in|out)\.(\d+)$", r".weight@product\2.\1", name)


def widened_llm(llm: PreTrainedModel, first_sound: int, config) -> tuple[PreTrainedModel, Widening]:
    """(the widened LLM, split for training, and its Widening) for an LLM recipe's `config`: widened anew by
    widen_dims / widen_neurons / widen_heads, or, with adapter= a widened adapter folder, as that one left it."""
    for setting in ("full", "lora_quiet"):
        if getattr(config, setting):
            raise ConfigError(f"widen_dims: {setting} is for the other kinds of training; leave it unset")
    try:
        if config.adapter:
            widening = read_widening(Path(config.adapter))
            model = load_widening(llm, Path(config.adapter))
        else:
            widening = Widening.of(
                llm.config, config.widen_dims, config.widen_neurons, config.widen_heads, first_sound,
                config.widen_head_rank,
            )  # fmt: skip
            model = widen(llm, widening, config.seed)
    except CheckpointError as e:
        raise ConfigError(f"widen_dims: {e}") from e
    return split_widened(model, widening, config.seed), widening


def is_widened(adapter: str | None) -> bool:
    """Whether adapter= names a widened adapter folder (not a LoRA one)."""
    return adapter is not None and (Path(adapter) / WIDENING_FILE).is_file()
