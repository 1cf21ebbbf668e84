"""The LLM widened for sound (lm/widening.py): text-only inputs get the base LLM's logits exactly, however the
trainable entries are set; sound positions are changed by them; an adapter folder holds only those entries and
rebuilds the same model; the widened model saves and loads as a plain LlamaForCausalLM; other models are refused."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from auralm.checkpoints import CheckpointError
from auralm.lm.widening import (
    WIDENING_WEIGHTS,
    Widening,
    cut_parts,
    factor,
    load_widening,
    save_widening,
    trainable_masks,
    widen,
)
from tests.lm.conftest import tiny_llama

FIRST_SOUND = 12  # the tiny Llama's last 3 of 15 rows stand in for sound tokens
DIMS, NEURONS = 16, 16  # 32 + 16 divides by 4 heads, and by 6 with a new key/value head (2 query heads each)


def widened(base: LlamaForCausalLM, heads: int = 1, head_rank: int = 0) -> tuple[LlamaForCausalLM, Widening]:
    widening = Widening.of(base.config, DIMS, NEURONS, heads, FIRST_SOUND, head_rank)
    return widen(base, widening), widening


def set_entries(model: LlamaForCausalLM, widening: Widening, seed: int, only: str = "") -> None:
    """Every entry that trains (of weights whose name holds `only`) set at random, large; those trained as products
    then cut to their rank."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mask in trainable_masks(model, widening).items():
            if only in name:
                weight = model.get_parameter(name)
                weight[mask] = torch.randn(int(mask.sum()), generator=generator)
                for product in widening.new_products(name):
                    inward, outward = factor(weight[product], widening.head_rank)
                    weight[product] = outward @ inward


@pytest.mark.parametrize(("tied", "heads", "head_rank"), [(True, 1, 0), (False, 1, 0), (True, 0, 0), (True, 1, 2)])
def test_text_gets_the_base_logits_whatever_the_new_weights_hold(tied, heads, head_rank):
    base = tiny_llama(tied, initializer_range=1.0)
    wide, widening = widened(base, heads, head_rank)
    set_entries(wide, widening, seed=1)
    text = torch.randint(0, FIRST_SOUND, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(text).logits[..., :FIRST_SOUND]
        assert torch.allclose(wide(text).logits[..., :FIRST_SOUND], expected, atol=1e-4)  # logits ~10: rounding
        spoken = text.clone()
        spoken[:, 3:8] = FIRST_SOUND + 1  # a clip before the text: what follows hears it
        assert (wide(spoken).logits[:, 8:, :FIRST_SOUND] - base(spoken).logits[:, 8:, :FIRST_SOUND]).abs().max() > 0.1


def test_the_new_heads_alone_carry_a_clip_to_the_text_after_it():
    base = tiny_llama(tied=True, initializer_range=1.0)
    wide, widening = widened(base)
    set_entries(wide, widening, seed=3, only="o_proj")  # the new heads' output: what they write
    text = torch.randint(0, FIRST_SOUND, (2, 12), generator=torch.Generator().manual_seed(0))
    spoken = text.clone()
    spoken[:, 2:5] = FIRST_SOUND
    with torch.no_grad():
        assert torch.allclose(wide(text).logits[..., :FIRST_SOUND], base(text).logits[..., :FIRST_SOUND], atol=1e-4)
        before = wide(spoken).logits
        set_entries(wide, widening, seed=4, only="o_proj")
        assert (wide(spoken).logits[:, 5:] - before[:, 5:]).abs().max() > 0.1


def test_what_trains_leaves_text_weights_alone():
    wide, widening = widened(tiny_llama(tied=True))
    masks = trainable_masks(wide, widening)
    width, inner, queries, keys = 32, 64, 4 * 8, 2 * 8  # head_dim 8
    embed = masks["model.embed_tokens.weight"]
    assert not embed[:FIRST_SOUND].any() and embed[FIRST_SOUND:].all()  # text rows; sound rows, every dim
    attention, mlp = "model.layers.0.self_attn.", "model.layers.0.mlp."
    assert not masks[attention + "q_proj.weight"][:queries, :width].any()  # the old heads read the old dims as before
    assert masks[attention + "q_proj.weight"][queries:].all()  # the new heads' queries read everything
    assert (
        masks[attention + "k_proj.weight"][:, width:].all() and not masks[attention + "v_proj.weight"][:, :width].any()
    )
    assert (
        masks[attention + "o_proj.weight"][:, queries:].all()
        and not masks[attention + "o_proj.weight"][:, :queries].any()
    )
    assert wide.get_parameter(attention + "k_proj.weight").shape[0] == keys + 8  # one more key/value head
    assert not masks[mlp + "gate_proj.weight"][inner:, :width].any()  # the gate reads the new dims only
    assert not masks[mlp + "down_proj.weight"][:, :inner].any() and masks[mlp + "down_proj.weight"][:, inner:].all()


def test_an_adapter_folder_holds_only_the_new_entries_and_rebuilds_the_model(tmp_path):
    base = tiny_llama(tied=True)
    wide, widening = widened(base)
    set_entries(wide, widening, seed=2)
    save_widening(cut_parts(wide.state_dict(), widening), widening, tmp_path)
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

    wider = LlamaForCausalLM(LlamaConfig(**{**base.config.to_dict(), "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="hidden size 32"):
        load_widening(wider, tmp_path)
    with pytest.raises(CheckpointError, match="divide by the 6 query heads"):  # 32 + 8 does not
        widen(base, Widening.of(base.config, 8, NEURONS, 1, FIRST_SOUND))


def test_a_low_rank_head_is_kept_as_its_two_factors_and_rebuilds_the_model(tmp_path):
    wide, widening = widened(tiny_llama(tied=True), head_rank=2)
    set_entries(wide, widening, seed=5)
    parts = cut_parts(wide.state_dict(), widening)
    query, output = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    assert parts[f"{query}@product0.in"].shape == (2, 32) and parts[f"{query}@product0.out"].shape == (16, 2)
    assert parts[f"{output}@product0.in"].shape == (2, 16) and parts[f"{output}@product0.out"].shape == (48, 2)
    assert f"{query}@1" not in parts and f"{output}@0" not in parts  # the large parts are not kept whole as well
    whole = sum(int(m.sum()) for m in trainable_masks(wide, widening).values())
    assert sum(t.numel() for t in parts.values()) < whole

    save_widening(parts, widening, tmp_path)
    again = load_widening(tiny_llama(tied=True), tmp_path)
    ids = torch.tensor([[4, 5, FIRST_SOUND, FIRST_SOUND + 2, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, wide(ids).logits, atol=1e-4)

    del parts[f"{output}@product0.out"]
    save_widening(parts, widening, tmp_path)
    with pytest.raises(CheckpointError, match=r"has no .*o_proj\.weight@product0\.out to multiply"):
        load_widening(tiny_llama(tied=True), tmp_path)
    with pytest.raises(CheckpointError, match="head rank 17"):
        widen(tiny_llama(tied=True), Widening.of(tiny_llama(tied=True).config, DIMS, NEURONS, 1, FIRST_SOUND, 17))


def test_models_it_cannot_widen_exactly_are_refused():
    with_bias = LlamaForCausalLM(LlamaConfig(vocab_size=15, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, attention_bias=True))  # fmt: skip
    with pytest.raises(CheckpointError, match="without biases"):
        widen(with_bias, Widening.of(with_bias.config, DIMS, NEURONS, 0, FIRST_SOUND))
    mistral = MistralForCausalLM(MistralConfig(vocab_size=15, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=4))  # fmt: skip
    with pytest.raises(CheckpointError, match="Llama"):
        widen(mistral, Widening.of(mistral.config, DIMS, NEURONS, 0, FIRST_SOUND))
