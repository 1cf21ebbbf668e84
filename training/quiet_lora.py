"""LoRA that reads only the input directions typed text leaves quiet, so that the merged adapter changes text
answers less (`lora_quiet=` of the LLM recipes).

A LoRA layer adds B·A·x to a frozen linear layer's output. Over typed text a layer's inputs x lie mostly in few
directions: in SmolLM2-135M the quarter of the eigenvectors of E[x xᵀ] with the smallest eigenvalues holds
0.03–1 % of the inputs' energy (RESULTS.md). With `lora_quiet=f` each A's rows are kept in the span Q (d_in × k,
k = f·d_in) of the quietest directions, A ← A·Q·Qᵀ, at the start and after every optimizer step (a projected
gradient step), so text inputs are barely read. Sound positions, whose embeddings and hidden states the adapter
writes itself (B and the sound rows are free), can carry what it needs there. The adapter stays plain LoRA: it
merges into the LLM's weights and loads anywhere.

    quiet = quiet_directions(model, tokenizer, typed_conversations, fraction=0.25)   # the LLM with its adapter
    confine(model, quiet)                                                            # after each optimizer step
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedTokenizerBase

PEFT_PREFIX = "base_model.model."  # a LoRA layer's name in the peft model, before the plain LLM's


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{the plain LLM's module name: its peft LoRA layer}."""
    return {name.removeprefix(PEFT_PREFIX): m for name, m in model.named_modules() if hasattr(m, "lora_A")}


@torch.no_grad()
def quiet_directions(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]], fraction: float
) -> dict[str, torch.Tensor]:
    """{LoRA layer name: Q (d_in, k) float32, on the model's device}: the k = round(fraction · d_in) eigenvectors of
    the second moment of the layer's inputs, read with the adapter off over the typed `conversations` (chat
    messages), with the smallest eigenvalues. Every process of a run computes the same from the same conversations."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("lora_quiet: the model has no LoRA layers")
    moments: dict[str, torch.Tensor] = {}

    def accumulate(name: str, _module, args) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).float()  # (tokens, d_in)
        moments[name] = moments.get(name, 0) + x.T @ x

    device = next(model.parameters()).device
    hooks = [layer.get_base_layer().register_forward_pre_hook(partial(accumulate, n)) for n, layer in layers.items()]
    try:
        with model.disable_adapter():
            for messages in conversations:
                ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
                model(input_ids=ids["input_ids"].to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    quiet = {}
    for name, moment in moments.items():
        _, vectors = torch.linalg.eigh(moment.double())  # eigenvalues ascending
        quiet[name] = vectors[:, : max(1, round(fraction * len(moment)))].float().contiguous()
    return quiet


def reply_pairs(replies: list[str], count: int = 256) -> list[list[dict]]:
    """Typed conversations from a recipe's own replies (transcripts, answers): each reply asked, the next given, so
    the directions are measured on the text the data speaks of."""
    return [
        [{"role": "user", "content": asked}, {"role": "assistant", "content": given}]
        for asked, given in itertools.pairwise(replies[: count + 1])
    ]


@torch.no_grad()
def confine(model: torch.nn.Module, quiet: dict[str, torch.Tensor]) -> None:
    """A ← A·Q·Qᵀ for every LoRA layer's A (r, d_in): its rows read only the quiet directions."""
    for name, layer in lora_layers(model).items():
        q = quiet[name]
        for lora_a in layer.lora_A.values():
            weight = lora_a.weight
            rows = weight.to_local() if isinstance(weight, DTensor) else weight  # FSDP2 shards the rows
            rows.copy_((rows.float() @ q) @ q.T)
