"""The quantizer bottleneck between Whisper's encoder and decoder (Ichigo / WhisperSpeech "WhisperVQ").

encode: encoder frames (B, T, d) → mean-pool ×2 (or stride) → x + mlp(mlp_ln(x)) → project_in
        → l2-normalise → the codebook row with the largest dot product, all K + 1 rows → codes (B, T / 2)
decode: codes → codebook rows → project_out → repeat ×2 → + learned positions
        → attention block(s) with RoPE → ln_post → features for Whisper's decoder (B, T, d)
T is a window's encoder frames: 1500 for Ichigo's 30 s, fewer for a shorter window.
`forward` is the training path: the same two halves joined by the straight-through quantizer.

The state dict is key-for-key Ichigo's (`mlp.0`, `rq.project_in`, `rq.layers.0._codebook.embed`,
`positional_embedding.weight`, `_out_blocks.0.attn.query`, …). vector-quantize-pytorch's
ResidualVQ stays the module that owns the codebook, for its training machinery (EMA,
dead-code expiry); inference reads its public `codebooks` and projections only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ
from whisper.model import LayerNorm

from auralm.kernels import nearest_code
from auralm.tokenizer.attention_block import ResidualAttentionBlock
from auralm.tokenizer.config import WHISPER_FRAMES, TokenizerConfig

L2NORM_EPS = 1e-6  # vector-quantize-pytorch's l2norm


# State-dict prefixes of the weights that, with the codebook, decide the codes (the encode half); the rest (the
# attention blocks, positions and projections after the quantizer) only turns codes into decoder features.
CODE_DECIDING = ("mlp", "rq.project_in")
DECODE_BLOCKS = "_out_blocks"  # the decode path's blocks in the state dict, as Ichigo names them


class BottleneckOutput(NamedTuple):
    features: torch.Tensor  # (B, T, d): what Whisper's decoder cross-attends to
    codes: torch.Tensor  # (B, T / downsample), int64
    commitment: torch.Tensor  # scalar: how far the inputs lie from their codes


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
            decay=config.codebook_decay,
            commitment_weight=1.0,
            kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=config.dead_code_threshold,
        )
        self.positional_embedding = nn.Embedding(WHISPER_FRAMES, d)
        qk_scale = config.query_mult * 8 / config.head_width**0.5
        # `_out_blocks` (DECODE_BLOCKS, not `blocks`): the name Ichigo's checkpoints use.
        self._out_blocks = nn.ModuleList(
            ResidualAttentionBlock(d, config.n_head, qk_scale, config.ffn_mult, config.rope)
            for _ in range(config.depth)
        )
        self.ln_post = LayerNorm(d)
        self.codes_kept = False  # keep_codes(): the codebook no longer learns

    @property
    def decode_blocks(self) -> nn.ModuleList:
        """The attention blocks of the decode path; their state-dict keys start with `DECODE_BLOCKS`."""
        return self._out_blocks

    @property
    def codebook(self) -> torch.Tensor:
        """(n_codes + 1, codebook_dim): the speech codes, then the mask code."""
        return self.rq.codebooks[0]

    def keep_codes(self) -> None:
        """Freeze what decides the codes (CODE_DECIDING's weights and the EMA codebook): training then moves
        only the decode half, and the codes of any audio, like the tokenizer's hash, stay as they are."""
        for name, parameter in self.named_parameters():
            if name.startswith(CODE_DECIDING):
                parameter.requires_grad_(False)
        self.codes_kept = True

    def forward(self, frames: torch.Tensor, code_mask: torch.Tensor | None = None) -> BottleneckOutput:
        """Training: frames (B, T, d) → decoder features through the quantizer, gradients passing
        straight through it. In training mode vector-quantize-pytorch updates the codebook as it
        goes (EMA of the rows, k-means init, dead-code replacement), as batch norm updates its stats.

        code_mask: (B, T / downsample), True where a code holds speech; elsewhere the decoder sees the
        mask code's row (what `dequantize` pads with), as Ichigo trains it.
        """
        quantized, codes, commitment = self.rq(self._pooled(frames), freeze_codebook=self.codes_kept)
        # quantized (B, T/ds, d), codes (B, T/ds, 1), commitment (1,)
        if code_mask is not None:
            padding = self.rq.project_out(self.codebook[self.config.mask_code])  # (d,)
            quantized = torch.where(code_mask[..., None], quantized, padding)
        return BottleneckOutput(self._decode(quantized), codes[..., 0], commitment.sum())

    def quantize(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: Whisper encoder output (B, T, d). Returns codes (B, T / downsample), int64.

        Searched and scored as vector-quantize-pytorch's cosine codebook does (Ichigo's codes):
        the l2-normalised input against the stored rows as they are, the mask code included.
        """
        B = frames.shape[0]
        z = F.normalize(self.rq.project_in(self._pooled(frames)), dim=-1, eps=L2NORM_EPS)  # (B, T/ds, dim)
        return nearest_code(z.flatten(0, 1), self.codebook, metric="dot").view(B, -1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, T ≤ codes_per_window), int. Positions past T are padding (the mask code).

        Returns features for Whisper's decoder, (B, frames_per_window, d).
        """
        B, T = codes.shape
        if T > self.config.codes_per_window:
            raise ValueError(f"{T} codes exceed one window's {self.config.codes_per_window}; decode windows separately")
        padded = torch.full(
            (B, self.config.codes_per_window), self.config.mask_code, dtype=torch.long, device=codes.device
        )
        padded[:, :T] = codes
        return self._decode(self.rq.project_out(self.codebook[padded]))  # rows: (B, codes_per_window, d)

    def _pooled(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → mean-pooled (or strided) groups of `downsample` frames + the residual MLP, (B, T/ds, d)."""
        B, T, d = frames.shape
        groups = frames.view(B, T // self.config.downsample, self.config.downsample, d)
        x = groups.mean(dim=2) if self.config.pooling == "mean" else groups[:, :, 0]
        return x + self.mlp(self.mlp_ln(x))

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        """Quantized rows (B, T/ds, d) → features for Whisper's decoder (B, T, d)."""
        x = rows.repeat_interleave(self.config.downsample, dim=1)  # (B, T, d)
        x = x + self.positional_embedding.weight[: x.shape[1]]
        positions = torch.arange(x.shape[1], device=x.device)
        for block in self._out_blocks:
            x = block(x, positions)
        return self.ln_post(x)


def codebook_usage(counts: torch.Tensor) -> dict[str, float]:
    """Share of codes used, and the perplexity of their distribution (= the codebook size when uniform)."""
    total = counts.sum()
    if total == 0:
        return {"codes_used": 0.0, "code_perplexity": 0.0}
    p = counts[counts > 0] / total
    return {"codes_used": float((counts > 0).float().mean()), "code_perplexity": float(torch.exp(-(p * p.log()).sum()))}
