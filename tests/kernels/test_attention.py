"""Flash attention (Triton) against the plain-torch reference: outputs and all three gradients,
over odd lengths, causal and not, GQA, padding, q_len ≠ k_len, packed variable lengths and scales."""

import pytest
import torch

from auralm.kernels.attention import attention_reference, flash_attention, flash_attention_varlen

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 in both: differences are summation order only. bf16/fp16: the outputs and gradients
# are rounded to 8/11 bits, one ulp of values around 4 is 3e-2 in bf16.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE, dtype).requires_grad_()  # noqa: E731
    return make(B, Hq, Lq, D), make(B, Hkv, Lk, D), make(B, Hkv, Lk, D)


def assert_same_with_gradients(fn, reference, q, k, v, tolerance):
    out = fn(q, k, v)
    expected = reference(q, k, v)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)
    for name, got, want in zip("qkv", grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance, msg=lambda m, n=name: f"d{n}: {m}")


CASES = [
    # B, Hq, Hkv, Lq, Lk, D, causal
    (2, 4, 4, 37, 37, 64, False),  # odd length, plain multi-head
    (2, 4, 4, 37, 37, 64, True),
    (1, 8, 2, 53, 53, 80, True),  # GQA 4:1, head dim 80 (padded to 128 inside)
    (2, 4, 1, 1, 70, 128, True),  # one query against a KV cache: causal aligned to the end
    (1, 2, 2, 5, 70, 64, True),  # q_len < k_len
    (1, 2, 1, 20, 9, 64, True),  # q_len > k_len: the first rows see no key and output 0
    (2, 2, 2, 130, 70, 64, False),  # more than one tile on each side
    # longer than a key tile (128 in the interpreter): the forward pass's unmasked whole tiles run too
    (1, 2, 2, 150, 300, 64, False),
    (1, 4, 2, 300, 300, 80, True),
    (1, 2, 2, 150, 290, 64, True),  # causal across several tiles with q_len < k_len: the backward's diagonals
]


@pytest.mark.parametrize(("B", "Hq", "Hkv", "Lq", "Lk", "D", "causal"), CASES)
def test_matches_reference_float32(B, Hq, Hkv, Lq, Lk, D, causal):
    q, k, v = inputs(B, Hq, Hkv, Lq, Lk, D, torch.float32)
    assert_same_with_gradients(
        lambda *a: flash_attention(*a, causal=causal),
        lambda *a: attention_reference(*a, causal=causal),
        q, k, v, TOLERANCE[torch.float32],
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_reference_half_precision(dtype):
    q, k, v = inputs(2, 4, 2, 45, 45, 64, dtype)
    assert_same_with_gradients(
        lambda *a: flash_attention(*a, causal=True),
        lambda *a: attention_reference(*a, causal=True),
        q,
        k,
        v,
        TOLERANCE[dtype],
    )


def test_rows_that_see_no_key_are_zero_with_zero_gradient():
    q, k, v = inputs(1, 2, 1, 20, 9, 64, torch.float32)
    out = flash_attention(q, k, v, causal=True)
    assert out[:, :, :11].abs().max() == 0  # query i sees keys j ≤ i − 11
    assert out[:, :, 11:].abs().min() > 0
    (dq,) = torch.autograd.grad(out.sum(), q)
    assert dq[:, :, :11].abs().max() == 0


@pytest.mark.parametrize("causal", [False, True])
def test_padded_batches(causal):
    q, k, v = inputs(3, 4, 2, 50, 50, 64, torch.float32)
    lengths = torch.tensor([50, 21, 1])
    assert_same_with_gradients(
        lambda *a: flash_attention(*a, causal=causal, query_lengths=lengths, key_lengths=lengths),
        lambda *a: attention_reference(*a, causal=causal, query_lengths=lengths, key_lengths=lengths),
        q, k, v, TOLERANCE[torch.float32],
    )  # fmt: skip
    out = flash_attention(q, k, v, causal=causal, query_lengths=lengths, key_lengths=lengths)
    assert out[1, :, 21:].abs().max() == 0 and out[2, :, 1:].abs().max() == 0


def test_key_padding_only_and_a_custom_scale():
    q, k, v = inputs(2, 2, 1, 33, 40, 64, torch.float32)
    key_lengths = torch.tensor([40, 7])
    assert_same_with_gradients(
        lambda *a: flash_attention(*a, scale=0.3, key_lengths=key_lengths),
        lambda *a: attention_reference(*a, scale=0.3, key_lengths=key_lengths),
        q, k, v, TOLERANCE[torch.float32],
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_packed_variable_lengths_match_each_sequence_alone(causal):
    lengths_q, lengths_k = [13, 1, 40], [13, 30, 40]
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(sum(lengths_q), 4, 64, generator=generator).requires_grad_()
    k = torch.randn(sum(lengths_k), 2, 64, generator=generator).requires_grad_()
    v = torch.randn(sum(lengths_k), 2, 64, generator=generator).requires_grad_()
    cu_q = torch.tensor([0, 13, 14, 54], dtype=torch.int32)
    cu_k = torch.tensor([0, 13, 43, 83], dtype=torch.int32)
    out = flash_attention_varlen(
        q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), cu_q.to(DEVICE), cu_k.to(DEVICE), causal=causal
    )
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    expected, expected_grads = [], []
    for b in range(3):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        part = attention_reference(
            q[qs].transpose(0, 1)[None], k[ks].transpose(0, 1)[None], v[ks].transpose(0, 1)[None], causal=causal
        )
        expected.append(part[0].transpose(0, 1))
    expected = torch.cat(expected)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad.cpu())
    torch.testing.assert_close(out.cpu(), expected, atol=2e-5, rtol=2e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=2e-5, rtol=2e-5)


def test_non_contiguous_inputs_in_transformers_layout():
    # transformers holds (B, L, H, D) and transposes views to (B, H, L, D)
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 19, 4, 64, generator=generator).to(DEVICE).transpose(1, 2) for _ in range(3))
    torch.testing.assert_close(
        flash_attention(q, k, v, causal=True), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5
    )


def test_mismatched_shapes_are_refused():
    q, k, v = inputs(1, 3, 2, 8, 8, 64, torch.float32)
    with pytest.raises(ValueError, match="not a multiple"):
        flash_attention(q, k, v)
    with pytest.raises(ValueError, match="do not fit"):
        flash_attention(q, k[..., :32], v)
    with pytest.raises(ValueError, match="scale must be positive"):
        flash_attention(q, k.repeat(1, 2, 1, 1)[:, :3], v.repeat(1, 2, 1, 1)[:, :3], scale=-0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("Hq", "Hkv", "L", "D"), [(16, 16, 1500, 64), (32, 8, 1024, 128), (8, 8, 777, 80)])
def test_full_grid_on_gpu(Hq, Hkv, L, D, causal, dtype):
    q, k, v = inputs(2, Hq, Hkv, L, L, D, dtype)
    assert_same_with_gradients(
        lambda *a: flash_attention(*a, causal=causal),
        lambda *a: attention_reference(*a, causal=causal),
        q,
        k,
        v,
        TOLERANCE[dtype],
    )
