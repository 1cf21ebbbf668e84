"""The quantizer bottleneck between Whisper's encoder and decoder (Ichigo / WhisperSpeech "WhisperVQ").

encode: encoder frames (B, 1500, d) → mean-pool ×2 (or stride) → x + mlp(mlp_ln(x)) → project_in
        → l2-normalise → the codebook row with the largest dot product, all K + 1 rows → codes (B, 750)
decode: codes → codebook rows → project_out → repeat ×2 → + learned positions
        → attention block(s) with RoPE → ln_post → features for Whisper's decoder (B, 1500, d)

The state dict is key-for-key Ichigo's (`mlp.0`, `rq.project_in`, `rq.layers.0._codebook.embed`,
`positional_embedding.weight`, `_out_blocks.0.attn.query`, …). vector-quantize-pytorch's
ResidualVQ stays the module that owns the codebook, for its training machinery (EMA,
dead-code expiry); inference reads its public `codebooks` and projections only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ
from whisper.model import LayerNorm

from auralm.kernels import nearest_code
from auralm.tokenizer.attention_block import ResidualAttentionBlock
from auralm.tokenizer.config import WHISPER_FRAMES, TokenizerConfig

L2NORM_EPS = 1e-6  # vector-quantize-pytorch's l2norm


class QuantizerBottleneck(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        d = config.n_state
        self.mlp = nn.Sequential(nn.Linear(d, d * config.ffn_mult), nn.GELU(), nn.Linear(d * config.ffn_mult, d))
        self.mlp_ln = LayerNorm(d)
        self.rq = ResidualVQ(
            dim=d,
            codebook_size=config.n_codes + 1,  # + the mask code
            codebook_dim=config.codebook_dim,
            num_quantizers=1,
            use_cosine_sim=True,
            decay=0.9,
            commitment_weight=1.0,
            threshold_ema_dead_code=2,
        )
        self.positional_embedding = nn.Embedding(WHISPER_FRAMES, d)
        qk_scale = config.query_mult * 8 / config.head_width**0.5
        # `_out_blocks` (not `blocks`): the name Ichigo's checkpoints use.
        self._out_blocks = nn.ModuleList(
            ResidualAttentionBlock(d, config.n_head, qk_scale, config.ffn_mult, config.rope)
            for _ in range(config.depth)
        )
        self.ln_post = LayerNorm(d)

    @property
    def codebook(self) -> torch.Tensor:
        """(n_codes + 1, codebook_dim): the speech codes, then the mask code."""
        return self.rq.codebooks[0]

    def quantize(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: Whisper encoder output (B, 1500, d). Returns codes (B, 1500 / downsample), int64.

        Searched and scored as vector-quantize-pytorch's cosine codebook does (Ichigo's codes):
        the l2-normalised input against the stored rows as they are, the mask code included.
        """
        B, T, d = frames.shape
        groups = frames.view(B, T // self.config.downsample, self.config.downsample, d)
        x = groups.mean(dim=2) if self.config.pooling == "mean" else groups[:, :, 0]  # (B, 750, d)
        x = x + self.mlp(self.mlp_ln(x))
        z = self.rq.project_in(x)  # (B, 750, codebook_dim)
        z = F.normalize(z, dim=-1, eps=L2NORM_EPS)
        codes = nearest_code(z.flatten(0, 1), self.codebook, metric="dot")
        return codes.view(B, -1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, T ≤ 750), int. Positions past T are padding (the mask code).

        Returns features for Whisper's decoder, (B, 1500, d).
        """
        B, T = codes.shape
        if T > self.config.codes_per_window:
            raise ValueError(f"{T} codes exceed one window's {self.config.codes_per_window}; decode windows separately")
        padded = torch.full(
            (B, self.config.codes_per_window), self.config.mask_code, dtype=torch.long, device=codes.device
        )
        padded[:, :T] = codes
        x = self.rq.project_out(self.codebook[padded])  # (B, 750, d)
        x = x.repeat_interleave(self.config.downsample, dim=1)  # (B, 1500, d)
        x = x + self.positional_embedding.weight
        positions = torch.arange(WHISPER_FRAMES, device=x.device)
        for block in self._out_blocks:
            x = block(x, positions)
        return self.ln_post(x)
