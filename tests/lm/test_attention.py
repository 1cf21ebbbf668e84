"""attn_implementation="auralm" on a tiny random Llama: the same logits and generations as "eager"."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import auralm.lm.attention
from auralm.lm import register_attention

CONFIG = LlamaConfig(
    vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def models():
    register_attention()
    torch.manual_seed(0)
    eager = LlamaForCausalLM._from_config(copy.deepcopy(CONFIG), attn_implementation="eager").eval()
    ours = LlamaForCausalLM._from_config(copy.deepcopy(CONFIG), attn_implementation="auralm").eval()
    ours.load_state_dict(eager.state_dict())
    return eager, ours


def batch():
    ids = torch.randint(0, 100, (3, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as generation pads
    mask[2, 9:] = 0  # right padding, as training pads
    return ids, mask


@torch.no_grad()
def test_same_logits_as_eager_without_padding(models):
    eager, ours = models
    ids, _ = batch()
    torch.testing.assert_close(ours(ids).logits, eager(ids).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_same_logits_as_eager_with_left_and_right_padding(models):
    eager, ours = models
    ids, mask = batch()
    valid = mask.bool()
    torch.testing.assert_close(
        ours(ids, attention_mask=mask).logits[valid],
        eager(ids, attention_mask=mask).logits[valid],
        atol=1e-5,
        rtol=1e-5,
    )


@torch.no_grad()
def test_same_greedy_generation_with_a_kv_cache(models):
    eager, ours = models
    ids, mask = batch()
    ids, mask = ids[:2], mask[:2]  # generation pads on the left
    expected = eager.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False), expected)


def test_gradients_flow_through_the_kernel(models):
    _, ours = models
    ids, mask = batch()
    ours.zero_grad()
    ours(ids, attention_mask=mask, labels=ids).loss.backward()
    grad = ours.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@torch.no_grad()
def test_unsupported_cases_fall_back_to_sdpa_with_one_warning(models, monkeypatch):
    eager, ours = models
    ids, mask = batch()
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor outside the interpreter
    monkeypatch.setattr(auralm.lm.attention, "_warned", set())
    with pytest.warns(UserWarning, match="using torch SDPA instead") as warned:
        logits = ours(ids, attention_mask=mask).logits
        ours(ids, attention_mask=mask)
    assert len(warned) == 1
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], eager(ids, attention_mask=mask).logits[valid], atol=1e-5, rtol=1e-5)
