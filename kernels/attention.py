"""Flash attention, forward and backward, in Triton, with the plain-torch reference it is tested against.

For one head, scores S = scale · Q Kᵀ (masked to −∞), P = softmax(S), O = P V. The forward pass
streams K/V tiles past a tile of queries with an online softmax (running max m and sum l, in
base 2: exp(x) = 2^(x·log₂e)) and keeps LSE = m + log l per row, so the backward pass rebuilds
P = exp(S − LSE) tile by tile instead of storing it:
    Δ = rowsum(dO ∘ O),  dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − Δ),  dQ = scale · dS K,  dK = scale · dSᵀ Q
dK/dV and dQ come from two kernels (one owns a K/V tile, the other a Q tile), so nothing is
accumulated with atomics. Grouped-query attention: query head h reads K/V head h // (Hq / Hkv),
and the dK/dV kernel sums over the query heads of its group.

Masks: `causal` aligns queries to the end of the keys (query i of n sees key j of m when
j ≤ i + m − n, as in decoding with a KV cache); per-sequence lengths cover padded batches
(dense layout) and packed variable-length batches (cumulative sequence lengths). A query row
that sees no key outputs 0.

Both layouts address token t of sequence b, head h, as  base + b·stride_b + (start_b + t)·stride_t
+ h·stride_h : dense (B, H, L, D) has start_b = 0; packed (T, H, D) has stride_b = 0, start_b = cu[b].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from auralm.kernels.launch import LOG2E, MAX_HEAD_DIM, autotuned, backend, configs, launch

_LOG2E = tl.constexpr(LOG2E)  # as the kernels see it


# ---- public API ----------------------------------------------------------------------------


def dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D). The Triton kernel for CUDA tensors, torch SDPA otherwise
    (CPU, head dims over MAX_HEAD_DIM, a scale that is not positive); causal aligned to the end of the keys either
    way."""
    if _use_kernel(q) and (scale is None or scale > 0):
        return flash_attention(q, k, v, causal=causal, scale=scale)
    Lq, Lk = q.shape[2], k.shape[2]
    end_aligned = None
    if causal and Lq != Lk:  # SDPA's is_causal aligns to the start
        end_aligned = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=end_aligned, is_causal=causal and Lq == Lk, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )


def _use_kernel(q: torch.Tensor) -> bool:
    """Compiled kernels only: the interpreter is for testing the kernels, too slow for whole models."""
    return backend(q) == "gpu" and q.shape[-1] <= MAX_HEAD_DIM


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    query_lengths: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq a multiple of Hkv. Returns (B, Hq, Lq, D).

    scale: default 1/√D. query_lengths / key_lengths: (B,) ints, valid tokens per sequence from the
    start (right padding); padded query rows output 0. Differentiable in q, k and v.
    """
    B, _, Lq, D = q.shape
    _check(q, k, v)
    zeros = torch.zeros(B, dtype=torch.int32, device=q.device)
    q_len = _lengths(query_lengths, B, Lq, q.device)
    k_len = _lengths(key_lengths, B, k.shape[2], q.device)
    # (B, H, L, D) addressed as (b, t, h): strides (b, t, h) = (stride 0, stride 2, stride 1)
    return _FlashAttention.apply(q, k, v, zeros, q_len, zeros, k_len, causal, _scale(scale, D), (0, 2, 1))


def flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Packed sequences: q (Tq, Hq, D), k and v (Tk, Hkv, D); cu_seqlens_*: (B + 1,) starts, ending
    with the total. Sequence b is q[cu_q[b]:cu_q[b+1]] against k[cu_k[b]:cu_k[b+1]]. Returns (Tq, Hq, D)."""
    _check(q, k, v)
    starts_q, starts_k = cu_seqlens_q[:-1].int(), cu_seqlens_k[:-1].int()
    q_len, k_len = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).int(), (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).int()
    # (T, H, D) addressed as (b, t, h): no batch stride
    return _FlashAttention.apply(
        q, k, v, starts_q, q_len, starts_k, k_len, causal, _scale(scale, q.shape[-1]), (None, 0, 1)
    )


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    query_lengths: torch.Tensor | None = None,
    key_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same maths in plain torch (float32, K/V heads repeated for GQA), for tests and fallbacks."""
    B, Hq, Lq, D = q.shape
    Lk, group = k.shape[2], Hq // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    q_len = _lengths(query_lengths, B, Lq, q.device).long()
    k_len = _lengths(key_lengths, B, Lk, q.device).long()
    rows, cols = torch.arange(Lq, device=q.device), torch.arange(Lk, device=q.device)
    visible = cols[None, None, :] < k_len[:, None, None]  # (B, Lq, Lk)
    visible = visible & (rows[None, :, None] < q_len[:, None, None])
    if causal:
        visible = visible & (cols[None, None, :] <= rows[None, :, None] + (k_len - q_len)[:, None, None])
    scores = (q.float() @ k.transpose(-1, -2)) * _scale(scale, D)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows that see nothing: 0
    return (probs @ v).to(q.dtype)


# ---- autograd ------------------------------------------------------------------------------


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_start, q_len, k_start, k_len, causal, scale, axes):
        interpreted = backend(q) == "interpreter"
        # The interpreter computes bf16/fp16 tl.dot wrongly: there everything runs in float32.
        qc, kc, vc = (t.float() if interpreted else t for t in (q, k, v))
        o = torch.zeros_like(qc)  # rows past a sequence's length stay 0
        # LSE and Δ share q's layout without the head dim: dense (B, H, L), packed (T, H)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        B, Hq, Hkv, max_q, max_k, D = _dims(q, k, q_len, k_len, axes)
        launch(
            _attention_forward, lambda blocks: (triton.cdiv(max_q, blocks["BLOCK_M"]), B * Hq),
            (qc, kc, vc, o, lse, q_start, q_len, k_start, k_len,
             *_strides(qc, axes), *_strides(kc, axes), *_strides(vc, axes), *_strides(o, axes), *_strides(lse, axes),
             Hq, Hq // Hkv, scale * LOG2E),
            _interpreter_blocks(interpreted, max_q, max_k), CAUSAL=causal, **_head_dims(D),
        )  # fmt: skip
        ctx.save_for_backward(qc, kc, vc, o, lse, q_start, q_len, k_start, k_len)
        ctx.causal, ctx.scale, ctx.axes, ctx.dtypes = causal, scale, axes, (q.dtype, k.dtype, v.dtype)
        return o.to(q.dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, q_start, q_len, k_start, k_len = ctx.saved_tensors
        axes, interpreted = ctx.axes, backend(q) == "interpreter"
        do = do.to(q.dtype).contiguous()
        delta = torch.empty_like(lse)
        dq, dk, dv = torch.zeros_like(q, dtype=torch.float32), torch.zeros_like(k), torch.zeros_like(v)
        B, Hq, Hkv, max_q, max_k, D = _dims(q, k, q_len, k_len, axes)
        blocks, head_dims = _interpreter_blocks(interpreted, max_q, max_k), _head_dims(D)
        common = (q_start, q_len, k_start, k_len, *_strides(q, axes), *_strides(k, axes), *_strides(v, axes))
        common += (*_strides(do, axes), *_strides(lse, axes), Hq, Hq // Hkv, ctx.scale, ctx.scale * LOG2E)
        block_rows = blocks["BLOCK_M"] if blocks else 64  # Δ is a row sum: nothing to tune
        _attention_delta[(triton.cdiv(max_q, block_rows), B * Hq)](
            o, do, delta, q_start, q_len, *_strides(o, axes), *_strides(do, axes), *_strides(delta, axes), Hq,
            BLOCK_M=block_rows, **head_dims,
        )  # fmt: skip
        launch(
            _attention_backward_dkdv, lambda blocks: (triton.cdiv(max_k, blocks["BLOCK_N"]), B * Hkv),
            (q, k, v, do, lse, delta, dk, dv, *common, *_strides(dk, axes), *_strides(dv, axes)),
            blocks, CAUSAL=ctx.causal, **head_dims,
        )  # fmt: skip
        launch(
            _attention_backward_dq, lambda blocks: (triton.cdiv(max_q, blocks["BLOCK_M"]), B * Hq),
            (q, k, v, do, lse, delta, dq, *common, *_strides(dq, axes)),
            blocks, CAUSAL=ctx.causal, **head_dims,
        )  # fmt: skip
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return dq.to(q_dtype), dk.to(k_dtype), dv.to(v_dtype), None, None, None, None, None, None, None


# ---- kernels -------------------------------------------------------------------------------


# GPU configurations (BLOCK_M, BLOCK_N, warps, pipeline stages), timed on the first call for each
# head dim, causal flag and dtype. Chosen from Hopper (sm_90) builds, `python benchmarks/hopper_compile.py`:
# all use warpgroup matrix instructions, fit shared memory, and each kernel has one that spills no
# register at head dim 128 (the others spill a little there but may still win at 64: the forward's 128×64 with 4
# warps, Whisper's head dim 64 at 255 registers without a spill, is there for the encoder's shape).
BLOCKS = ("BLOCK_M", "BLOCK_N")
FORWARD_CONFIGS = configs([(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (128, 64, 4, 3)], BLOCKS)
BACKWARD_DKDV_CONFIGS = configs([(64, 64, 8, 2), (32, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3)], BLOCKS)
BACKWARD_DQ_CONFIGS = configs([(128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4)], BLOCKS)
TUNING_KEY = ["HEAD_DIM", "CAUSAL"]


@triton.jit
def _tile(ptr, b, tokens, head, stride_b, stride_t, stride_h, dims):
    """Pointers to a (tokens × head dim) tile of one head of sequence b (see the module docstring)."""
    return ptr + b * stride_b + tokens[:, None] * stride_t + head * stride_h + dims[None, :]


@triton.jit
def _row(ptr, b, tokens, head, stride_b, stride_t, stride_h):
    """Pointers to one value per token (LSE, Δ) of one head of sequence b."""
    return ptr + b * stride_b + tokens * stride_t + head * stride_h


@triton.jit
def _load_tile(ptrs, tokens, limit, dims, CHECK_TOKENS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (tokens × BLOCK_D) tile, 0 at tokens ≥ limit (when CHECK_TOKENS) and at dims ≥ HEAD_DIM; a mask
    that cannot hide anything (a full tile, a power-of-two head dim) is not computed at all."""
    if CHECK_TOKENS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs, mask=(tokens < limit)[:, None], other=0.0)
        else:
            tile = tl.load(ptrs, mask=(tokens < limit)[:, None] & (dims < HEAD_DIM)[None, :], other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=(dims < HEAD_DIM)[None, :], other=0.0)
    return tile


@triton.jit
def _block(ptr, b, start, head, stride_b, stride_t, stride_h, length, first, HEAD_DIM: tl.constexpr,
           BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """A block pointer over the (length × HEAD_DIM) rows of one head of sequence b, at token `first`:
    no per-element address registers, and bounds checked only where asked."""
    return tl.make_block_ptr(
        ptr + b * stride_b + start * stride_t + head * stride_h, shape=(length, HEAD_DIM), strides=(stride_t, 1),
        offsets=(first, 0), block_shape=(BLOCK_T, BLOCK_D), order=(1, 0),
    )  # fmt: skip


@triton.jit
def _load_block(block, CHECK_TOKENS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """The tile under a block pointer, 0 past its sequence (when CHECK_TOKENS) and past HEAD_DIM."""
    if CHECK_TOKENS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(block, boundary_check=(0,), padding_option="zero")
        else:
            tile = tl.load(block, boundary_check=(0, 1), padding_option="zero")
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(block)
        else:
            tile = tl.load(block, boundary_check=(1,), padding_option="zero")
    return tile


@triton.jit
def _store_tile(ptrs, value, tokens, limit, dims, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    mask = (tokens < limit)[:, None]
    if HEAD_DIM != BLOCK_D:
        mask = mask & (dims < HEAD_DIM)[None, :]
    tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _visible(rows, cols, q_len, k_len, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask: the key exists and, if causal, is not after the query (end-aligned)."""
    mask = (rows[:, None] < q_len) & (cols[None, :] < k_len)
    if CAUSAL:
        mask = mask & (cols[None, :] <= rows[:, None] + (k_len - q_len))
    return mask


@triton.jit
def _forward_tiles(
    q, m_i, l_i, acc, k_ptr, v_ptr, b, k_start, kv_h, skb, skt, skh, svb, svt, svh,
    rows, q_len, k_len, scale_log2, lo, hi,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Key tiles [lo, hi) folded into the running softmax (m_i, l_i, acc). MASKED for tiles where some
    key is hidden from some row (past k_len, or after the row when causal); the others skip all masks."""
    k_block = _block(k_ptr, b, k_start, kv_h, skb, skt, skh, k_len, lo, HEAD_DIM, BLOCK_N, BLOCK_D)
    v_block = _block(v_ptr, b, k_start, kv_h, svb, svt, svh, k_len, lo, HEAD_DIM, BLOCK_N, BLOCK_D)
    for n_start in range(lo, hi, BLOCK_N):
        cols = n_start + tl.arange(0, BLOCK_N)
        k = _load_block(k_block, MASKED, HEAD_DIM, BLOCK_D)
        v = _load_block(v_block, MASKED, HEAD_DIM, BLOCK_D)
        k_block = tl.advance(k_block, (BLOCK_N, 0))
        v_block = tl.advance(v_block, (BLOCK_N, 0))
        s = tl.dot(q, tl.trans(k))  # unscaled: the scale (> 0) goes into the exponent, one FMA per score
        if MASKED:
            s = tl.where(_visible(rows, cols, q_len, k_len, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale_log2)
        m_safe = m_new
        if MASKED:  # a row that has seen no key yet keeps m = −∞; subtract 0 instead
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * scale_log2 - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@autotuned(FORWARD_CONFIGS, TUNING_KEY)
@triton.jit
def _attention_forward(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, q_start_ptr, q_len_ptr, k_start_ptr, k_len_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, slb, slt, slh,
    H, GROUP, scale_log2,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b, h = tl.program_id(1) // H, tl.program_id(1) % H
    q_len, k_len = tl.load(q_len_ptr + b), tl.load(k_len_ptr + b)
    m_start = tl.program_id(0) * BLOCK_M
    if m_start >= q_len:
        return
    q_start, k_start, kv_h = tl.load(q_start_ptr + b), tl.load(k_start_ptr + b), h // GROUP
    rows = m_start + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q_ptrs = _tile(q_ptr, b, q_start + rows, h, sqb, sqt, sqh, dims)
    q = _load_tile(q_ptrs, rows, q_len, dims, True, HEAD_DIM, BLOCK_D)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, base-2 units
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of 2^(s − m)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # Keys [0, full) are seen by every row of the block: whole tiles without masks. [full, end) are masked.
    if CAUSAL:  # row r sees keys ≤ r + k_len − q_len; keys after the block's last row are never seen
        end = tl.minimum(k_len, m_start + BLOCK_M + k_len - q_len)
        full = tl.maximum(tl.minimum(k_len, m_start + 1 + k_len - q_len), 0) // BLOCK_N * BLOCK_N
    else:
        end = k_len
        full = k_len // BLOCK_N * BLOCK_N
    kv = (k_ptr, v_ptr, b, k_start, kv_h, skb, skt, skh, svb, svt, svh, rows, q_len, k_len, scale_log2)
    m_i, l_i, acc = _forward_tiles(q, m_i, l_i, acc, *kv, 0, full, CAUSAL, False, BLOCK_N, HEAD_DIM, BLOCK_D)
    m_i, l_i, acc = _forward_tiles(q, m_i, l_i, acc, *kv, full, end, CAUSAL, True, BLOCK_N, HEAD_DIM, BLOCK_D)

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    _store_tile(_tile(o_ptr, b, q_start + rows, h, sob, sot, soh, dims), out, rows, q_len, dims, HEAD_DIM, BLOCK_D)
    # natural-log LSE; +∞ for a row that sees nothing, so the backward pass's exp(s − LSE) is 0 there
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) / _LOG2E, float("inf"))
    tl.store(_row(lse_ptr, b, q_start + rows, h, slb, slt, slh), lse, mask=rows < q_len)


@triton.jit
def _attention_delta(
    o_ptr, do_ptr, delta_ptr, q_start_ptr, q_len_ptr, sob, sot, soh, sdob, sdot, sdoh, slb, slt, slh, H,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Δ = rowsum(dO ∘ O), once per query row."""
    b, h = tl.program_id(1) // H, tl.program_id(1) % H
    q_len, q_start = tl.load(q_len_ptr + b), tl.load(q_start_ptr + b)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    o = _load_tile(_tile(o_ptr, b, q_start + rows, h, sob, sot, soh, dims), rows, q_len, dims, True, HEAD_DIM, BLOCK_D)
    do_ptrs = _tile(do_ptr, b, q_start + rows, h, sdob, sdot, sdoh, dims)
    do = _load_tile(do_ptrs, rows, q_len, dims, True, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(_row(delta_ptr, b, q_start + rows, h, slb, slt, slh), delta, mask=rows < q_len)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, k_ptr, v_ptr, b, k_start, kv_h, skb, skt, skh, svb, svt, svh, rows, q_len, k_len,
    scale_log2, dims, lo, hi,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Key tiles [lo, hi) folded into one Q tile's dQ (MASKED: the causal mask applied)."""
    for n_start in range(lo, hi, BLOCK_N):
        cols = n_start + tl.arange(0, BLOCK_N)
        k = _load_tile(_tile(k_ptr, b, k_start + cols, kv_h, skb, skt, skh, dims), cols, k_len, dims, True, HEAD_DIM,
                       BLOCK_D)  # fmt: skip
        v = _load_tile(_tile(v_ptr, b, k_start + cols, kv_h, svb, svt, svh, dims), cols, k_len, dims, True, HEAD_DIM,
                       BLOCK_D)  # fmt: skip
        p = tl.exp2(tl.dot(q, tl.trans(k)) * scale_log2 - lse[:, None] * _LOG2E)
        if MASKED:
            p = tl.where(_visible(rows, cols, q_len, k_len, CAUSAL), p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@autotuned(BACKWARD_DKDV_CONFIGS, TUNING_KEY)
@triton.jit
def _attention_backward_dkdv(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    q_start_ptr, q_len_ptr, k_start_ptr, k_len_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, slb, slt, slh,
    H, GROUP, scale, scale_log2,
    sdkb, sdkt, sdkh, sdvb, sdvt, sdvh,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One K/V tile of one K/V head: dV = Σ Pᵀ dO, dK = scale · Σ dSᵀ Q over its group's query heads."""
    H_KV = H // GROUP
    b, kv_h = tl.program_id(1) // H_KV, tl.program_id(1) % H_KV
    q_len, k_len = tl.load(q_len_ptr + b), tl.load(k_len_ptr + b)
    n_start = tl.program_id(0) * BLOCK_N
    if n_start >= k_len:
        return
    q_start, k_start = tl.load(q_start_ptr + b), tl.load(k_start_ptr + b)
    cols = n_start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = _load_tile(
        _tile(k_ptr, b, k_start + cols, kv_h, skb, skt, skh, dims), cols, k_len, dims, True, HEAD_DIM, BLOCK_D
    )
    v = _load_tile(
        _tile(v_ptr, b, k_start + cols, kv_h, svb, svt, svh, dims), cols, k_len, dims, True, HEAD_DIM, BLOCK_D
    )
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    first = 0
    if CAUSAL:  # queries before this one never see the tile: row + k_len − q_len ≥ n_start
        first = tl.maximum(0, n_start - (k_len - q_len)) // BLOCK_M * BLOCK_M
    for g in range(GROUP):
        h = kv_h * GROUP + g
        for m_start in range(first, q_len, BLOCK_M):
            rows = m_start + tl.arange(0, BLOCK_M)
            q_ptrs = _tile(q_ptr, b, q_start + rows, h, sqb, sqt, sqh, dims)
            do_ptrs = _tile(do_ptr, b, q_start + rows, h, sdob, sdot, sdoh, dims)
            q = _load_tile(q_ptrs, rows, q_len, dims, True, HEAD_DIM, BLOCK_D)
            do = _load_tile(do_ptrs, rows, q_len, dims, True, HEAD_DIM, BLOCK_D)
            lse = tl.load(_row(lse_ptr, b, q_start + rows, h, slb, slt, slh), mask=rows < q_len, other=float("inf"))
            delta = tl.load(_row(delta_ptr, b, q_start + rows, h, slb, slt, slh), mask=rows < q_len, other=0.0)
            p = tl.exp2(tl.dot(q, tl.trans(k)) * scale_log2 - lse[:, None] * _LOG2E)  # (BLOCK_M, BLOCK_N)
            # Non-causal, nothing to mask: rows past q_len have LSE +∞ (P = 0), and a key past k_len (a zero row)
            # reaches only its own dK/dV rows, which are not stored.
            if CAUSAL:
                p = tl.where(_visible(rows, cols, q_len, k_len, CAUSAL), p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    dk_ptrs = _tile(dk_ptr, b, k_start + cols, kv_h, sdkb, sdkt, sdkh, dims)
    _store_tile(dk_ptrs, dk * scale, cols, k_len, dims, HEAD_DIM, BLOCK_D)
    _store_tile(
        _tile(dv_ptr, b, k_start + cols, kv_h, sdvb, sdvt, sdvh, dims), dv, cols, k_len, dims, HEAD_DIM, BLOCK_D
    )


@autotuned(BACKWARD_DQ_CONFIGS, TUNING_KEY)
@triton.jit
def _attention_backward_dq(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    q_start_ptr, q_len_ptr, k_start_ptr, k_len_ptr,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, slb, slt, slh,
    H, GROUP, scale, scale_log2,
    sdqb, sdqt, sdqh,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One Q tile of one query head: dQ = scale · Σ dS K over the key tiles it sees."""
    b, h = tl.program_id(1) // H, tl.program_id(1) % H
    q_len, k_len = tl.load(q_len_ptr + b), tl.load(k_len_ptr + b)
    m_start = tl.program_id(0) * BLOCK_M
    if m_start >= q_len:
        return
    q_start, k_start, kv_h = tl.load(q_start_ptr + b), tl.load(k_start_ptr + b), h // GROUP
    rows = m_start + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load_tile(_tile(q_ptr, b, q_start + rows, h, sqb, sqt, sqh, dims), rows, q_len, dims, True, HEAD_DIM, BLOCK_D)
    do_ptrs = _tile(do_ptr, b, q_start + rows, h, sdob, sdot, sdoh, dims)
    do = _load_tile(do_ptrs, rows, q_len, dims, True, HEAD_DIM, BLOCK_D)
    lse = tl.load(_row(lse_ptr, b, q_start + rows, h, slb, slt, slh), mask=rows < q_len, other=float("inf"))
    delta = tl.load(_row(delta_ptr, b, q_start + rows, h, slb, slt, slh), mask=rows < q_len, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # Key tiles [0, full) are seen by every row of the tile: no masks. [full, end) cross the causal diagonal or k_len:
    # masked (a key past k_len loads as a zero row, but its P need not be finite).
    end, full = k_len, k_len // BLOCK_N * BLOCK_N
    if CAUSAL:
        end = tl.minimum(k_len, m_start + BLOCK_M + k_len - q_len)
        full = tl.maximum(tl.minimum(k_len, m_start + 1 + k_len - q_len), 0) // BLOCK_N * BLOCK_N
    kv = (k_ptr, v_ptr, b, k_start, kv_h, skb, skt, skh, svb, svt, svh, rows, q_len, k_len, scale_log2, dims)
    dq = _dq_tiles(dq, q, do, lse, delta, *kv, 0, full, CAUSAL, False, BLOCK_N, HEAD_DIM, BLOCK_D)
    dq = _dq_tiles(dq, q, do, lse, delta, *kv, full, end, CAUSAL, True, BLOCK_N, HEAD_DIM, BLOCK_D)
    _store_tile(
        _tile(dq_ptr, b, q_start + rows, h, sdqb, sdqt, sdqh, dims), dq * scale, rows, q_len, dims, HEAD_DIM, BLOCK_D
    )


# ---- helpers -------------------------------------------------------------------------------


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if k.shape != v.shape or q.shape[-1] != k.shape[-1] or q.dim() != k.dim():
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not fit together")
    heads_q, heads_kv = q.shape[-3] if q.dim() == 4 else q.shape[-2], k.shape[-3] if k.dim() == 4 else k.shape[-2]
    if heads_q % heads_kv:
        raise ValueError(f"{heads_q} query heads are not a multiple of {heads_kv} key/value heads")
    if backend(q) == "torch":
        raise RuntimeError("flash_attention needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU)")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[-1]} is over the kernels' {MAX_HEAD_DIM}")


def _scale(scale: float | None, head_dim: int) -> float:
    scale = 1 / math.sqrt(head_dim) if scale is None else float(scale)
    if not scale > 0:  # the forward pass takes each row's maximum score before scaling it
        raise ValueError(f"the attention scale must be positive, got {scale}")
    return scale


def _lengths(lengths: torch.Tensor | None, batch: int, full: int, device: torch.device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), full, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)


def _strides(t: torch.Tensor, axes: tuple[int | None, int, int]) -> tuple[int, int, int]:
    """(batch, token, head) strides of q, k, v, O, … or of LSE/Δ; a packed layout has no batch stride."""
    return tuple(0 if axis is None else t.stride(axis) for axis in axes)


def _dims(q, k, q_len, k_len, axes) -> tuple[int, int, int, int, int, int]:
    """B, Hq, Hkv, longest query and key sequence, head dim."""
    head_axis = axes[2]
    return (len(q_len), q.shape[head_axis], k.shape[head_axis], int(q_len.max()), int(k_len.max()), q.shape[-1])


def _head_dims(head_dim: int) -> dict[str, int]:
    """HEAD_DIM, and the power-of-two tile width (≥ 16, what tl.dot needs) it is padded to."""
    return {"HEAD_DIM": head_dim, "BLOCK_D": max(16, triton.next_power_of_2(head_dim))}


def _interpreter_blocks(interpreted: bool, max_q: int, max_k: int) -> dict[str, int] | None:
    """Blocks for the interpreter, which cannot time configurations: few large tiles, since each
    interpreted step costs the same whatever its size. None on a GPU: the autotuner picks there."""
    if not interpreted:
        return None
    return {
        "BLOCK_M": max(16, min(128, triton.next_power_of_2(max_q))),
        "BLOCK_N": max(16, min(128, triton.next_power_of_2(max_k))),
    }
