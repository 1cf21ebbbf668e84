"""auralm's flash attention as a transformers attention implementation.

    from auralm.lm import register_attention
    register_attention()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="auralm")

transformers hands us q (B, Hq, Lq, D) and un-repeated k, v (B, Hkv, Lk, D) and, through the
mask function registered beside it (transformers' own FlashAttention-2 one), either no mask or
the 2-D padding mask (B, Lk) of the tokens seen so far. Padded batches are packed into
variable-length sequences (valid tokens only), as FlashAttention-2 does, so left and right
padding both work; causal attention aligns each sequence's queries to the end of its keys,
which is what decoding with a KV cache needs.

What the kernel does not do (CPU tensors outside the Triton interpreter, dropout in training,
sliding windows, logit soft-capping, head dims over 256) runs on torch SDPA instead, after a
one-line warning.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from auralm.kernels.attention import flash_attention, flash_attention_varlen
from auralm.kernels.launch import MAX_HEAD_DIM, backend

ATTENTION_NAME = "auralm"
_warned: set[str] = set()


def register_attention() -> None:
    """Make `attn_implementation="auralm"` available to every transformers model."""
    AttentionInterface.register(ATTENTION_NAME, auralm_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, flash_attention_mask)


def auralm_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature. Returns (output (B, Lq, Hq, D), None)."""
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    reason = _unsupported(query, dropout, kwargs)
    if reason:
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"auralm attention: {reason}; using torch SDPA instead", stacklevel=2)
        return _sdpa(query, key, value, attention_mask, causal, scaling), None
    if attention_mask is None:
        return flash_attention(query, key, value, causal=causal, scale=scaling).transpose(1, 2), None
    return _padded(query, key, value, attention_mask.bool(), causal, scaling), None


def _unsupported(query: torch.Tensor, dropout: float, kwargs: dict) -> str | None:
    if backend(query) == "torch":
        return "the Triton kernel needs a CUDA device"
    if dropout > 0:
        return "attention dropout is not implemented"
    if kwargs.get("sliding_window") is not None:
        return "sliding-window attention is not implemented"
    if kwargs.get("softcap") is not None:
        return "logit soft-capping is not implemented"
    if query.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {query.shape[-1]} is over {MAX_HEAD_DIM}"
    return None


def _padded(query, key, value, key_mask, causal, scale) -> torch.Tensor:
    """Pack the valid tokens, attend per sequence, scatter back. key_mask: (B, Lk), True = token."""
    B, Hq, Lq, D = query.shape
    query_mask = key_mask[:, -Lq:]  # the queries are the last Lq of the tokens seen
    q = query.transpose(1, 2)[query_mask]  # (Tq, Hq, D)
    k, v = key.transpose(1, 2)[key_mask], value.transpose(1, 2)[key_mask]  # (Tk, Hkv, D)
    cu_q = F.pad(query_mask.sum(1).cumsum(0), (1, 0)).int()
    cu_k = F.pad(key_mask.sum(1).cumsum(0), (1, 0)).int()
    packed = flash_attention_varlen(q, k, v, cu_q, cu_k, causal=causal, scale=scale)
    out = query.new_zeros(B, Lq, Hq, D)
    out[query_mask] = packed
    return out


def _sdpa(query, key, value, key_mask, causal, scale) -> torch.Tensor:
    """The same masks for torch SDPA: (B, 1, Lq, Lk) booleans, causal aligned to the end."""
    B, _, Lq, _ = query.shape
    Lk = key.shape[2]
    visible = torch.ones(B, 1, Lq, Lk, dtype=torch.bool, device=query.device)
    if key_mask is not None:
        visible &= key_mask.bool()[:, None, None, :]
    if causal:
        visible &= torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).tril(Lk - Lq)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale, enable_gqa=True)
    return out.nan_to_num(0.0).transpose(1, 2)  # rows that see nothing: 0, as the kernel
