"""Nearest-code search: the vector quantizer's inner loop.

For x ∈ R^{N×d} and a codebook C ∈ R^{K×d}:
    euclidean: argmin_k ‖x_n − c_k‖² = argmin_k (‖c_k‖² − 2 x_n·c_k)   (‖x_n‖² is the same for every k)
    cosine:    argmax_k  x̂_n·ĉ_k   with x̂ = x / ‖x‖
Ties go to the lowest index, as torch.argmin does. The search runs in float32 over
row blocks, so memory is one (block × K) score matrix, never an (N × K × d) tensor.
This is the reference the Triton kernel is tested against and the CPU path.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Metric = Literal["euclidean", "cosine"]
ROWS_PER_BLOCK = 4096


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, metric: Metric = "euclidean") -> torch.Tensor:
    """Index of the nearest codebook row for each row of x.

    x: (N, d); codebook: (K, d); any float dtype. Returns int64 (N,).
    """
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"need x (N, d) and codebook (K, d), got {tuple(x.shape)} and {tuple(codebook.shape)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    codebook = codebook.float()
    if metric == "cosine":
        codebook = F.normalize(codebook, dim=-1)
        norms = torch.zeros(codebook.shape[0], device=codebook.device)  # x̂·ĉ alone decides
    else:
        norms = codebook.square().sum(-1)
    indices = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], ROWS_PER_BLOCK):
        block = x[start : start + ROWS_PER_BLOCK].float()
        if metric == "cosine":
            block = F.normalize(block, dim=-1)
        scores = torch.addmm(norms, block, codebook.T, alpha=-2)  # (block, K): ‖c‖² − 2 x·c, or −2 x̂·ĉ
        indices[start : start + ROWS_PER_BLOCK] = scores.argmin(dim=-1)
    return indices
