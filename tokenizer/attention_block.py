"""The attention block of the tokenizer's decode path, key-for-key as Ichigo and WhisperSpeech save it.

Pre-norm residual block: x + attn(attn_ln(x)), then x + mlp(mlp_ln(x)). Attention
has a bias-free key, optional rotary position embedding (RoPE, rotate-half form)
on queries and keys, and logits scaled by qk_scale / √head_width, where
qk_scale = query_mult · 8 / √head_width.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from whisper.model import LayerNorm

from auralm.kernels import dot_product_attention

ROPE_BASE = 10_000


class Rotary(nn.Module):
    def __init__(self, head_width: int):
        super().__init__()
        # Persistent: the foreign checkpoints carry `rotary.inv_freq`.
        self.register_buffer("inv_freq", 1.0 / ROPE_BASE ** (torch.arange(0, head_width, 2).float() / head_width))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, hw); positions: (T,). Returns x rotated by its positions."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # (T, hw/2)
        angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]  # (1, T, 1, hw)
        first, second = x.float().chunk(2, dim=-1)
        rotated_half = torch.cat([-second, first], dim=-1)
        return (x.float() * angles.cos() + rotated_half * angles.sin()).type_as(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int, qk_scale: float, rope: bool):
        super().__init__()
        self.n_head = n_head
        self.scale = qk_scale / math.sqrt(n_state // n_head)
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.rotary = Rotary(n_state // n_head) if rope else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, T, n_state); positions: (T,). Non-causal self-attention."""
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, self.n_head, -1) for proj in (self.query, self.key, self.value))  # (B, T, H, hw)
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        out = dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=self.scale
        )  # (B, H, T, hw)
        return self.out(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, n_state)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, qk_scale: float, ffn_mult: int, rope: bool):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head, qk_scale, rope)
        self.attn_ln = LayerNorm(n_state)
        self.mlp = nn.Sequential(
            nn.Linear(n_state, n_state * ffn_mult), nn.GELU(), nn.Linear(n_state * ffn_mult, n_state)
        )
        self.mlp_ln = LayerNorm(n_state)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, T, n_state); positions: (T,)."""
        x = x + self.attn(self.attn_ln(x), positions)
        return x + self.mlp(self.mlp_ln(x))
