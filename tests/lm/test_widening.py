"""The LLM widened for sound (lm/widening.py): text-only inputs get the base LLM's logits exactly, however the
trainable entries are set; sound positions are changed by them; an adapter folder holds only those entries and
rebuilds the same model; the widened model saves and loads as a plain LlamaForCausalLM; other models are refused."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from auralm.checkpoints import CheckpointError
from auralm.lm.widening import WIDENING_WEIGHTS, load_widening, save_widening, trainable_masks, widen, widening_of
from tests.lm.conftest import tiny_llama

FIRST_SOUND = 12  # the tiny Llama's last 3 of 15 rows stand in for sound tokens
DIMS, NEURONS = 8, 16


def set_trainable_entries(model: LlamaForCausalLM, seed: int) -> dict:
    """Every entry that trains set at random, large; returns the widening's sizes."""
    widening = widening_of(model, DIMS, NEURONS, FIRST_SOUND)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            mask = trainable_masks(model, widening).get(name)
            if mask is not None:
                parameter[mask] = torch.randn(int(mask.sum()), generator=generator)
    return widening


@pytest.mark.parametrize("tied", [True, False])
def test_text_gets_the_base_logits_whatever_the_new_weights_hold(tied):
    base = tiny_llama(tied, initializer_range=1.0)
    wide = widen(base, DIMS, NEURONS, FIRST_SOUND)
    set_trainable_entries(wide, seed=1)
    text = torch.randint(0, FIRST_SOUND, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(text).logits[..., :FIRST_SOUND]
        assert torch.allclose(wide(text).logits[..., :FIRST_SOUND], expected, atol=1e-4)  # logits ~10: rounding
        spoken = text.clone()
        spoken[:, 3:8] = FIRST_SOUND + 1  # a clip before the text: what follows hears it
        assert (wide(spoken).logits[:, 8:, :FIRST_SOUND] - base(spoken).logits[:, 8:, :FIRST_SOUND]).abs().max() > 0.1


def test_what_trains_leaves_text_weights_alone():
    wide = widen(tiny_llama(tied=True), DIMS, NEURONS, FIRST_SOUND)
    masks = trainable_masks(wide, widening_of(wide, DIMS, NEURONS, FIRST_SOUND))
    width, inner = 32, 64
    assert not masks["model.embed_tokens.weight"][:FIRST_SOUND].any()  # text rows
    assert masks["model.embed_tokens.weight"][FIRST_SOUND:].all()  # sound rows, every dim
    layer = "model.layers.0."
    assert not masks[layer + "self_attn.q_proj.weight"][:, :width].any()
    assert masks[layer + "self_attn.k_proj.weight"][:, width:].all()
    assert layer + "self_attn.o_proj.weight" not in masks  # nothing a text position computes writes the new dims
    assert not masks[layer + "mlp.gate_proj.weight"][inner:, :width].any()  # the gate reads the new dims only
    assert not masks[layer + "mlp.down_proj.weight"][:, :inner].any()
    assert masks[layer + "mlp.down_proj.weight"][:, inner:].all()


def test_an_adapter_folder_holds_only_the_new_entries_and_rebuilds_the_model(tmp_path):
    base = tiny_llama(tied=True)
    wide = widen(base, DIMS, NEURONS, FIRST_SOUND)
    widening = set_trainable_entries(wide, seed=2)
    save_widening(wide.state_dict(), widening, tmp_path)
    saved = sum(t.numel() for t in load_file(tmp_path / WIDENING_WEIGHTS).values())
    assert saved == sum(int(m.sum()) for m in trainable_masks(wide, widening).values())
    again = load_widening(tiny_llama(tied=True), tmp_path)
    ids = torch.tensor([[4, 5, FIRST_SOUND, FIRST_SOUND + 2, 6, 7]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, wide(ids).logits)

    wide.save_pretrained(tmp_path / "merged")  # what `auralm merge` writes: a plain Llama
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, wide(ids).logits, atol=1e-6)

    with pytest.raises(CheckpointError, match="hidden size"):
        wider = LlamaForCausalLM(LlamaConfig(**{**base.config.to_dict(), "hidden_size": 64}))
        load_widening(wider, tmp_path)


def test_models_it_cannot_widen_exactly_are_refused():
    with_bias = LlamaForCausalLM(LlamaConfig(vocab_size=15, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, attention_bias=True))  # fmt: skip
    with pytest.raises(CheckpointError, match="without biases"):
        widen(with_bias, DIMS, NEURONS, FIRST_SOUND)
    mistral = MistralForCausalLM(MistralConfig(vocab_size=15, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4))  # fmt: skip
    with pytest.raises(CheckpointError, match="Llama"):
        widen(mistral, DIMS, NEURONS, FIRST_SOUND)
