"""A speech adapter text cannot reach: the LLM widened for sound, so merged it answers text exactly as before.

A LoRA adapter changes weights every token runs through, so once merged it changes text answers (RESULTS.md:
19 of 20). Widening adds `dims` hidden dims and `neurons` MLP neurons to a Llama-family LLM and trains only
weights that text tokens never touch:
- text tokens' embeddings are 0 in the new dims and nothing a text position computes writes them (o_proj's and
  the old neurons' rows for the new dims stay 0), so the new dims stay 0 at every text position;
- q/k/v gain input columns for the new dims: at text positions they multiply 0;
- the new neurons' gate reads only the new dims: SiLU(0) · up = 0 at text positions;
- RMSNorm's mean runs over d + dims: the old γ × √(d / (d + dims)) and ε × d / (d + dims) give text positions
  the values they had.
Sound tokens carry a signal in the new dims, so at sound positions the new columns and neurons read and write
everything; text after a clip hears it through the sound positions' keys and values. The widened model is a
plain LlamaForCausalLM (head_dim kept): `auralm merge` writes it as any Hugging Face model.

What trains (`new_part`): the sound tokens' embedding rows, every dim; the new q/k/v columns; the new neurons
(gate: the new dims' columns; up and down whole); the norms' new entries. An adapter folder holds only those
(WIDENING_WEIGHTS, with WIDENING_FILE naming the sizes): about 9 M parameters for SmolLM2-135M at 72 dims and
128 neurons. New weights start so that the widened model is the LLM with sound tokens exactly: q/k/v columns and
down's new columns 0, the gate, up and the sound rows' new dims random.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, PreTrainedModel

from auralm.checkpoints import CheckpointError

WIDENING_FILE = "widening.json"  # in an adapter folder: {"dims", "neurons", "hidden_size", "intermediate_size", …}
WIDENING_WEIGHTS = "widening.safetensors"  # the new parts of the widened weights, keyed as the model's own
_ATTENTION_INPUTS = ("q_proj.weight", "k_proj.weight", "v_proj.weight")


def widen(model: PreTrainedModel, dims: int, neurons: int, first_sound: int, seed: int = 0) -> LlamaForCausalLM:
    """`model` (a LlamaForCausalLM with its sound tokens, ids first_sound …, already added) grown by `dims`
    hidden dims and `neurons` MLP neurons, still computing the same logits for every text-only input."""
    config = model.config
    if config.model_type != "llama" or config.attention_bias or getattr(config, "mlp_bias", False):
        raise CheckpointError(
            f"widening needs a Llama model without biases (this one: {config.model_type}); train LoRA instead"
        )
    width, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    if dims <= 0 or neurons <= 0:
        raise CheckpointError(f"widening by {dims} dims and {neurons} neurons: both must be positive")
    shrink = width / (width + dims)
    grown = type(config).from_dict({
        **config.to_dict(), "hidden_size": width + dims, "intermediate_size": config.intermediate_size + neurons,
        "head_dim": head_dim, "rms_norm_eps": config.rms_norm_eps * shrink,
    })  # fmt: skip
    wide = LlamaForCausalLM(grown).to(model.dtype)
    old = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    done = set()  # a tied output head is the input embedding: set once
    with torch.no_grad():
        for key, weight in wide.state_dict().items():
            if weight.data_ptr() in done:
                continue
            done.add(weight.data_ptr())
            weight.zero_()
            if key.endswith("norm.weight"):
                weight[:width], weight[width:] = old[key] * math.sqrt(shrink), 1
                continue
            weight[tuple(slice(0, n) for n in old[key].shape)] = old[key]
            part = new_part(key, width, config.intermediate_size, first_sound)
            if part is not None and key.endswith(("gate_proj.weight", "up_proj.weight", "embed_tokens.weight")):
                std = old[key].std() if "embed" in key else 1 / math.sqrt(weight.shape[1])
                weight[part] = torch.randn(weight[part].shape, generator=generator) * std
            if key.endswith("embed_tokens.weight"):
                weight[first_sound:, :width] = old[key][first_sound:]
    return wide.eval()


def new_part(key: str, width: int, inner: int, first_sound: int) -> tuple[slice, ...] | None:
    """The entries of widened weight `key` that train (and are saved), as an index; None: none of them.

    width, inner: the LLM's hidden and MLP sizes before widening; first_sound: the first sound token's id."""
    rest = slice(None)
    if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
        return slice(first_sound, None), rest
    if key.endswith(_ATTENTION_INPUTS):
        return rest, slice(width, None)
    if key.endswith("gate_proj.weight"):
        return slice(inner, None), slice(width, None)
    if key.endswith("up_proj.weight"):
        return slice(inner, None), rest
    if key.endswith("down_proj.weight"):
        return rest, slice(inner, None)
    if key.endswith("norm.weight"):
        return (slice(width, None),)
    return None


def trainable_masks(model: LlamaForCausalLM, widening: dict) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of its entries that train}, for every parameter with any; the rest train not."""
    masks = {}
    for name, parameter in model.named_parameters():
        part = new_part(name, widening["hidden_size"], widening["intermediate_size"], widening["first_sound"])
        if part is not None:
            mask = torch.zeros_like(parameter, dtype=torch.bool)
            mask[part] = True
            masks[name] = mask
    return masks


def widening_of(model: LlamaForCausalLM, dims: int, neurons: int, first_sound: int) -> dict:
    """The sizes a widened model records in WIDENING_FILE (model: the widened one)."""
    config = model.config
    return {
        "dims": dims, "neurons": neurons, "hidden_size": config.hidden_size - dims,
        "intermediate_size": config.intermediate_size - neurons, "first_sound": first_sound,
    }  # fmt: skip


def save_widening(state: dict[str, torch.Tensor], widening: dict, folder: Path) -> None:
    """Write the new parts of a widened model's `state` (its state dict) and its sizes into `folder`."""
    parts, seen = {}, set()
    for key, weight in state.items():
        part = new_part(key, widening["hidden_size"], widening["intermediate_size"], widening["first_sound"])
        if part is not None and weight.data_ptr() not in seen:  # a tied output head once, as the embedding
            seen.add(weight.data_ptr())
            parts[key] = weight[part].clone()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(parts, folder / WIDENING_WEIGHTS)
    (folder / WIDENING_FILE).write_text(json.dumps(widening, indent=2) + "\n")


def load_widening(model: PreTrainedModel, folder: Path) -> LlamaForCausalLM:
    """`model` (with the adapter's vocabulary) widened as `folder` records, its new parts set from the folder."""
    widening = json.loads((folder / WIDENING_FILE).read_text())
    base = model.config
    if (base.hidden_size, base.intermediate_size) != (widening["hidden_size"], widening["intermediate_size"]):
        raise CheckpointError(
            f"{folder}: widens an LLM of hidden size {widening['hidden_size']}, not this one "
            f"({base.hidden_size}); load it with the LLM it was trained on"
        )
    wide = widen(model, widening["dims"], widening["neurons"], widening["first_sound"])
    parts = load_file(folder / WIDENING_WEIGHTS)
    state = wide.state_dict()
    with torch.no_grad():
        for key, values in parts.items():
            if key not in state:
                raise CheckpointError(f"{folder}: {key} is not a weight of this LLM")
            state[key][new_part(key, base.hidden_size, base.intermediate_size, widening["first_sound"])] = values
    return wide
