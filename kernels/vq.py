"""Nearest-code search: the vector quantizer's inner loop.

For x ∈ R^{N×d} and a codebook C ∈ R^{K×d}:
    euclidean: argmin_k ‖x_n − c_k‖² = argmin_k (‖c_k‖² − 2 x_n·c_k)   (‖x_n‖² is the same for every k)
    cosine:    argmax_k  x̂_n·ĉ_k = argmin_k (−2 x̂_n·ĉ_k)            with x̂ = x / ‖x‖
    dot:       argmax_k  x_n·c_k  = argmin_k (−2 x_n·c_k)             (maximum inner product)
"dot" on l2-normalised inputs is vector-quantize-pytorch's cosine codebook exactly, as Ichigo
searches it: its EMA keeps unit rows, but the rows a checkpoint holds are not normalised again.
Ties go to the lowest index, as torch.argmin does.

Two implementations of the same maths:
  - `nearest_code_torch`: the reference and the CPU path; float32 over row blocks, so memory is
    one (block × K) score matrix, never an (N × K × d) tensor;
  - `nearest_code_triton`: one program per BLOCK_N rows keeps its rows in registers, streams the
    codebook through in BLOCK_K tiles as stored (each tile's norms taken on chip) with a running
    (min, argmin), and never writes a score to memory: one launch, nothing prepared on the host, the
    distances computed only when asked. CUDA tensors go here; under TRITON_INTERPRET=1 it also runs on
    CPU (tests).
`nearest_code` dispatches between them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from auralm.kernels.launch import autotuned, backend, configs, launch

Metric = Literal["euclidean", "cosine", "dot"]
ROWS_PER_BLOCK = 4096


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, metric: Metric = "euclidean", return_distances: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest codebook row for each row of x.

    x: (N, d); codebook: (K, d); float32, float16 or bfloat16. Returns int64 (N,), and with
    return_distances the float32 (N,) distance to that code: squared euclidean, 1 − cosine, or −x·c.
    """
    _check(x, codebook, metric)
    if backend(x) != "gpu":
        indices, distances = nearest_code_torch(x, codebook, metric)
        return (indices, distances) if return_distances else indices
    indices = _nearest_code_indices(x, codebook, metric)  # one launch: nothing else runs unless distances are asked
    return (indices, _distance_to(x, codebook, indices, metric)) if return_distances else indices


def nearest_code_torch(x: torch.Tensor, codebook: torch.Tensor, metric: Metric) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: (indices int64 (N,), distances float32 (N,))."""
    _check(x, codebook, metric)
    codebook, code_norms = _prepared_codebook(codebook, metric)
    indices = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    distances = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], ROWS_PER_BLOCK):
        block = x[start : start + ROWS_PER_BLOCK].float()
        if metric == "cosine":
            block = F.normalize(block, dim=-1)
        scores = torch.addmm(code_norms, block, codebook.T, alpha=-2)  # (block, K): ‖c‖² − 2 x·c, or −2 x̂·ĉ
        best, indices[start : start + ROWS_PER_BLOCK] = scores.min(dim=-1)
        distances[start : start + ROWS_PER_BLOCK] = _distance(best, block, metric)
    return indices, distances


def nearest_code_triton(x: torch.Tensor, codebook: torch.Tensor, metric: Metric) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel: (indices int64 (N,), distances float32 (N,)); CUDA, or CPU under TRITON_INTERPRET=1."""
    _check(x, codebook, metric)
    if backend(x) == "torch":
        raise RuntimeError("nearest_code_triton needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU)")
    indices = _nearest_code_indices(x, codebook, metric)
    return indices, _distance_to(x, codebook, indices, metric)


def _nearest_code_indices(x: torch.Tensor, codebook: torch.Tensor, metric: Metric) -> torch.Tensor:
    """The kernel's choice, int64 (N,). The codebook goes in as stored: the kernel normalises its rows (cosine) or
    takes their squared norms (euclidean) tile by tile, in float32, so no call prepares anything on the host."""
    interpreted = backend(x) == "interpreter"
    N, d = x.shape
    # On a GPU the dot runs in the input dtype (tensor cores) with float32 accumulation; the
    # interpreter computes a bf16 tl.dot wrongly, so there everything is float32.
    x_in = x.float() if interpreted else x.contiguous()
    codebook_in = codebook.float() if interpreted else codebook.contiguous()
    indices = torch.empty(N, dtype=torch.int64, device=x.device)
    interpreter_blocks = None
    if interpreted:  # whole codebooks of a few thousand codes in one step
        block_k = max(16, min(2048, triton.next_power_of_2(codebook.shape[0])))
        interpreter_blocks = {"BLOCK_N": max(16, min(triton.next_power_of_2(N), 2**19 // block_k)), "BLOCK_K": block_k}
    launch(
        _nearest_code_kernel, lambda blocks: (triton.cdiv(N, blocks["BLOCK_N"]),),
        (x_in, codebook_in, indices, N, codebook.shape[0], x_in.stride(0), codebook_in.stride(0)),
        interpreter_blocks, METRIC=metric, D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        PRECISION="ieee" if interpreted else "tf32x3",
    )  # fmt: skip
    return indices


# GPU configurations (BLOCK_N rows, BLOCK_K codes, warps, pipeline stages), timed on the first call
# for each codebook size, dim, metric and dtype.
NEAREST_CODE_CONFIGS = configs(
    [(64, 64, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 128, 4, 3), (256, 64, 8, 3), (256, 128, 8, 2)],
    ("BLOCK_N", "BLOCK_K"),
)


@autotuned(NEAREST_CODE_CONFIGS, ["K", "D", "METRIC"])
@triton.jit
def _nearest_code_kernel(
    x_ptr, codebook_ptr, indices_ptr, N, K, stride_x, stride_code,
    METRIC: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_mask = rows < N
    x = tl.load(
        x_ptr + rows[:, None] * stride_x + dims[None, :], mask=row_mask[:, None] & (dims[None, :] < D), other=0.0
    )
    if METRIC == "cosine":  # x̂ = x / max(‖x‖, ε), as F.normalize
        norm = tl.sqrt(tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=1))
        x = (x.to(tl.float32) / tl.maximum(norm, 1e-12)[:, None]).to(x.dtype)

    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for start in range(0, K, BLOCK_K):
        codes = start + tl.arange(0, BLOCK_K)
        code_mask = codes < K
        c = tl.load(
            codebook_ptr + codes[:, None] * stride_code + dims[None, :],
            mask=code_mask[:, None] & (dims[None, :] < D),
            other=0.0,
        ).to(tl.float32)
        # The per-code term of the score, from the rows as stored, in float32: ‖c‖² (euclidean), else 0;
        # padding codes get +inf and never win.
        if METRIC == "euclidean":
            c_term = tl.where(code_mask, tl.sum(c * c, axis=1), float("inf"))
        else:
            c_term = tl.where(code_mask, 0.0, float("inf"))
        if METRIC == "cosine":  # ĉ = c / max(‖c‖, ε)
            c = c / tl.maximum(tl.sqrt(tl.sum(c * c, axis=1)), 1e-12)[:, None]
        # float32 inputs: "tf32x3" on a GPU, three TF32 tensor-core products that keep about float32's
        # accuracy (plain FMA "ieee" spills registers at these tiles); exact "ieee" in the interpreter
        dots = tl.dot(x, tl.trans(c.to(x.dtype)), input_precision=PRECISION)
        scores = c_term[None, :] - 2.0 * dots  # (BLOCK_N, BLOCK_K)
        tile_best, tile_index = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best  # strict: an earlier tile keeps a tie, so the lowest index wins
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index.to(tl.int64) + start, best_index)
    tl.store(indices_ptr + rows, best_index, mask=row_mask)


def _check(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> None:
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"need x (N, d) and codebook (K, d), got {tuple(x.shape)} and {tuple(codebook.shape)}")
    if metric not in ("euclidean", "cosine", "dot"):
        raise ValueError(f"metric must be 'euclidean', 'cosine' or 'dot', got {metric!r}")
    if codebook.shape[0] == 0:
        raise ValueError("the codebook is empty")


def _prepared_codebook(codebook: torch.Tensor, metric: Metric) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 codebook (unit rows for cosine) and the per-code term of the score (‖c‖², or 0)."""
    codebook = codebook.float()
    if metric == "euclidean":
        return codebook.contiguous(), codebook.square().sum(-1)
    if metric == "cosine":
        codebook = F.normalize(codebook, dim=-1)
    return codebook.contiguous(), torch.zeros(codebook.shape[0], device=codebook.device)


def _distance_to(x: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Distances (N,) between the rows of x (N, d) and their codes, in float32. The kernel only chooses; the distance
    is computed again here (N × d, cheap), since half-precision inputs normalised inside it round its scores by
    ~1e-3."""
    rows, codes = x.float(), codebook[indices].float()
    if metric == "euclidean":
        return (rows - codes).square().sum(-1)
    if metric == "cosine":
        return 1 - (F.normalize(rows, dim=-1) * F.normalize(codes, dim=-1)).sum(-1)
    return -(rows * codes).sum(-1)


def _distance(best_score: torch.Tensor, rows: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Turn the minimal score back into a distance: ‖x‖² + score, 1 + score / 2 (= 1 − cos), or score / 2."""
    if metric == "cosine":
        return 1 + best_score / 2
    if metric == "dot":
        return best_score / 2
    return (rows.square().sum(-1) + best_score).clamp(min=0)
