"""A speech adapter text cannot reach: the LLM widened for sound, so merged it answers text exactly as before.

A LoRA adapter changes weights every token runs through, so once merged it changes text answers (RESULTS.md:
19 of 20). Widening grows a Llama-family LLM by `dims` hidden dims, `neurons` MLP neurons and `heads` key/value
heads (each with its group of query heads), and trains only weights that text never reaches:
- text tokens' embeddings are 0 in the new dims and nothing a text position computes writes them (o_proj's old
  heads and the old neurons have 0 rows there), so the new dims stay 0 wherever no sound came before;
- q/k/v gain input columns for the new dims: at such positions they multiply 0;
- the new neurons' gate reads only the new dims: SiLU(0) · up = 0 there;
- the new heads' keys and values read only the new dims: with no sound in the context every value is 0, so they
  add nothing; after a clip they carry it to every later position, and their output (o_proj's new columns) may
  write any dim, so a reply is steered by the clip directly, not only through what the old heads read;
- RMSNorm's mean runs over d + dims: the old γ × √(d / (d + dims)) and ε × d / (d + dims) give the old values.
The widened model is a plain LlamaForCausalLM (head_dim kept; d + dims must divide by the new head count):
`auralm merge` writes it as any Hugging Face model.

What trains (`new_parts`): the sound tokens' embedding rows, every dim; the new q/k/v columns; the new heads (their
q rows, their k/v rows' new columns, o_proj's columns for them); the new neurons (gate: the new dims' columns; up and
down whole). The norms' new entries stay 1: what reads a norm's output in the new dims (new columns, the sound rows)
trains, and absorbs any scale they would learn. With `head_rank` r > 0 the new heads' two large parts (their queries'
old-dim columns, o_proj's columns for them) train as products of rank r (`new_products`), like LoRA's, so a new head
costs a fraction of its full size. An adapter folder holds only those (WIDENING_WEIGHTS, keyed `name@i` for the i-th
part of weight `name`, a product's two factors `name@product<i>.in` (r × columns) and `.out` (rows × r)), with
WIDENING_FILE giving the sizes. What writes starts at 0 (`_random_start`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, PreTrainedModel

from auralm.checkpoints import CheckpointError

WIDENING_FILE = "widening.json"  # in an adapter folder: a Widening's fields
WIDENING_WEIGHTS = "widening.safetensors"  # the new parts of the widened weights, keyed `name@i`


@dataclass(frozen=True)
class Widening:
    """How an LLM was widened: what it adds, and the base sizes that say where the new entries are."""

    dims: int
    neurons: int
    heads: int  # new key/value heads, each with the base's number of query heads per key/value head
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    key_value_heads: int
    head_dim: int
    first_sound: int  # the first sound token's id: this row on of the embeddings train
    head_rank: int = 0  # > 0: the new heads' queries of the old dims and their o_proj columns train as rank-r products

    @classmethod
    def of(cls, config, dims: int, neurons: int, heads: int, first_sound: int, head_rank: int = 0) -> Widening:
        """The widening of a base LLM with this `config`."""
        attention_heads, key_value_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // attention_heads
        return cls(dims, neurons, heads, config.hidden_size, config.intermediate_size, attention_heads,
                   key_value_heads, head_dim, first_sound, head_rank)  # fmt: skip

    @property
    def new_query_heads(self) -> int:
        return self.heads * self.attention_heads // self.key_value_heads

    def new_parts(self, key: str) -> list[tuple[slice, ...]]:
        """The entries of widened weight `key` that train whole (and are saved): a list of disjoint index tuples."""
        return [part for part, large in self._trained(key) if not (large and self.head_rank)]

    def new_products(self, key: str) -> list[tuple[slice, ...]]:
        """The entries of widened weight `key` that train as products of rank head_rank (none when it is 0)."""
        return [part for part, large in self._trained(key) if large and self.head_rank]

    def _trained(self, key: str) -> list[tuple[tuple[slice, ...], bool]]:
        """(index tuple, whether it is a new head's large part) for each part of weight `key` that trains."""
        width, inner = slice(self.hidden_size, None), slice(self.intermediate_size, None)
        old, every = slice(0, self.hidden_size), slice(None)
        queries = self.attention_heads * self.head_dim
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
            return [((slice(self.first_sound, None), every), False)]
        if key.endswith("q_proj.weight"):  # every row reads the new dims; the new heads' rows read the old too
            return [((every, width), False), ((slice(queries, None), old), True)]
        if key.endswith(("k_proj.weight", "v_proj.weight")):  # keys and values: the new dims only
            return [((every, width), False)]
        if key.endswith("o_proj.weight"):
            return [((every, slice(queries, None)), True)] if self.heads else []
        if key.endswith("gate_proj.weight"):
            return [((inner, width), False)]
        if key.endswith("up_proj.weight"):
            return [((inner, every), False)]
        if key.endswith("down_proj.weight"):
            return [((every, inner), False)]
        return []


def factor(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inward (rank × columns), outward (rows × rank)): outward @ inward is `matrix`'s nearest of rank `rank`,
    `matrix` itself when its rank is no more."""
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    root = s[:rank].sqrt()
    inward, outward = root[:, None] * vh[:rank], u[:, :rank] * root
    return inward.to(matrix.dtype).contiguous(), outward.to(matrix.dtype).contiguous()


def widen(model: PreTrainedModel, widening: Widening, seed: int = 0) -> LlamaForCausalLM:
    """`model` (a LlamaForCausalLM with its sound tokens, ids widening.first_sound …, already added) grown as
    `widening` says (`Widening.of(model.config, …)`), still computing the same logits for every input without sound
    tokens."""
    config = model.config
    if config.model_type != "llama" or config.attention_bias or getattr(config, "mlp_bias", False):
        raise CheckpointError(
            f"widening needs a Llama model without biases (this one: {config.model_type}); train LoRA instead"
        )
    dims, neurons, heads = widening.dims, widening.neurons, widening.heads
    heads_after = config.num_attention_heads + widening.new_query_heads
    if dims <= 0 or neurons <= 0 or heads < 0 or (config.hidden_size + dims) % heads_after:
        raise CheckpointError(
            f"widening by {dims} dims, {neurons} neurons and {heads} heads: dims and neurons must be positive and "
            f"the hidden size {config.hidden_size} + dims must divide by the {heads_after} query heads"
        )
    if not 0 <= widening.head_rank <= min(widening.new_query_heads * widening.head_dim, config.hidden_size):
        raise CheckpointError(f"head rank {widening.head_rank}: 0 (whole) or at most the new heads' query width")
    shrink = config.hidden_size / (config.hidden_size + dims)
    grown = type(config).from_dict({
        **config.to_dict(), "hidden_size": config.hidden_size + dims,
        "intermediate_size": config.intermediate_size + neurons, "num_attention_heads": heads_after,
        "num_key_value_heads": config.num_key_value_heads + heads, "head_dim": widening.head_dim,
        "rms_norm_eps": config.rms_norm_eps * shrink,
    })  # fmt: skip
    wide = LlamaForCausalLM(grown).to(model.dtype)
    old = model.state_dict()
    done = set()  # a tied output head is the input embedding: set once
    with torch.no_grad():
        for key, weight in wide.state_dict().items():
            if weight.data_ptr() in done:
                continue
            done.add(weight.data_ptr())
            weight.zero_()
            if key.endswith("norm.weight"):
                weight[: config.hidden_size], weight[config.hidden_size :] = old[key] * math.sqrt(shrink), 1
            else:
                weight[tuple(slice(0, n) for n in old[key].shape)] = old[key]
        _random_start(wide, widening, torch.Generator().manual_seed(seed))
    return wide.eval()


def _random_start(model: LlamaForCausalLM, widening: Widening, generator: torch.Generator) -> None:
    """Draw the new entries that read: the sound rows' new dims, the new heads' queries (old dims; with head_rank, a
    product of that rank) and keys and values (new dims), the new neurons' gate and up. What writes (o_proj's and
    down's new columns) and the old heads' new q/k/v columns start at 0."""
    w = widening
    width, inner = w.hidden_size, w.intermediate_size
    queries, keys = w.attention_heads * w.head_dim, w.key_value_heads * w.head_dim
    starts = {
        "embed_tokens.weight": (slice(w.first_sound, None), slice(width, None)),
        "q_proj.weight": (slice(queries, None), slice(0, width)),
        "k_proj.weight": (slice(keys, None), slice(width, None)),
        "v_proj.weight": (slice(keys, None), slice(width, None)),
        "gate_proj.weight": (slice(inner, None), slice(width, None)),
        "up_proj.weight": (slice(inner, None), slice(None)),
    }
    for name, parameter in model.named_parameters():
        for ending, index in starts.items():
            if name.endswith(ending):
                if ending.startswith("embed"):  # the sound rows' new dims: as large as text rows' entries
                    std = parameter[: w.first_sound, :width].std()
                else:
                    std = 1 / math.sqrt(parameter.shape[1])
                rows, columns = parameter[index].shape
                if ending.startswith("q_proj") and w.head_rank:  # entries of the same spread, of rank head_rank
                    outward = torch.randn(rows, w.head_rank, generator=generator) / math.sqrt(w.head_rank)
                    parameter[index] = outward @ torch.randn(w.head_rank, columns, generator=generator) * std
                else:
                    parameter[index] = torch.randn(rows, columns, generator=generator) * std


def trainable_masks(model: LlamaForCausalLM, widening: Widening) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of its entries that train (whole or as products)}, for every parameter with any;
    the rest train not."""
    masks = {}
    for name, parameter in model.named_parameters():
        parts = widening.new_parts(name) + widening.new_products(name)
        if parts:
            mask = torch.zeros_like(parameter, dtype=torch.bool)
            for part in parts:
                mask[part] = True
            masks[name] = mask
    return masks


def cut_parts(state: dict[str, torch.Tensor], widening: Widening) -> dict[str, torch.Tensor]:
    """The new parts of a widened model's `state` (its state dict), keyed `name@i` as an adapter folder keeps them,
    products as their two factors (`factor`); a tied output head's once, as the embedding's."""
    parts, seen = {}, set()
    for key, weight in state.items():
        if weight.data_ptr() in seen:
            continue
        seen.add(weight.data_ptr())
        for i, part in enumerate(widening.new_parts(key)):
            parts[f"{key}@{i}"] = weight[part].clone()
        for i, product in enumerate(widening.new_products(key)):
            parts[f"{key}@product{i}.in"], parts[f"{key}@product{i}.out"] = factor(weight[product], widening.head_rank)
    return parts


def save_widening(parts: dict[str, torch.Tensor], widening: Widening, folder: Path) -> None:
    """Write a widening's new `parts` (keyed `name@i`, as `cut_parts` gives them) and its sizes into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: part.contiguous() for key, part in parts.items()}, folder / WIDENING_WEIGHTS)
    (folder / WIDENING_FILE).write_text(json.dumps(asdict(widening), indent=2) + "\n")


def read_widening(folder: Path) -> Widening:
    """The Widening an adapter folder records."""
    try:
        return Widening(**json.loads((folder / WIDENING_FILE).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / WIDENING_FILE}: not a widening auralm wrote ({e})") from e


def load_widening(model: PreTrainedModel, folder: Path) -> LlamaForCausalLM:
    """`model` (with the adapter's vocabulary) widened as `folder` records, its new parts set from the folder."""
    widening = read_widening(folder)
    base = Widening.of(
        model.config, widening.dims, widening.neurons, widening.heads, widening.first_sound, widening.head_rank
    )
    if base != widening:
        raise CheckpointError(
            f"{folder}: widens an LLM of hidden size {widening.hidden_size} and {widening.attention_heads} heads, not "
            f"this one ({base.hidden_size}, {base.attention_heads}); load it with the LLM it was trained on"
        )
    wide = widen(model, widening)
    state = wide.state_dict()
    saved = load_file(folder / WIDENING_WEIGHTS)
    with torch.no_grad():
        for name, values in saved.items():
            _set_saved(state, name, values, saved, widening, folder)
    return wide


def _set_saved(state: dict, name: str, values: torch.Tensor, saved: dict, widening: Widening, folder: Path) -> None:
    """Write the saved tensor `name` (a part, or a product's inward factor times its outward one) into `state`."""
    key, _, index = name.rpartition("@")
    if key in state and index.isdigit() and int(index) < len(widening.new_parts(key)):
        state[key][widening.new_parts(key)[int(index)]] = values
        return
    product, _, side = index.partition(".")
    i = product.removeprefix("product")
    known = key in state and product.startswith("product") and i.isdigit() and side in ("in", "out")
    if not known or int(i) >= len(widening.new_products(key)):
        raise CheckpointError(f"{folder}: {name} is not a part of this LLM's widened weights")
    other = f"{key}@{product}.{'out' if side == 'in' else 'in'}"
    if other not in saved:
        raise CheckpointError(f"{folder}: {name} has no {other} to multiply; save the adapter again")
    if side == "in":
        state[key][widening.new_products(key)[int(i)]] = saved[other].float() @ values.float()
