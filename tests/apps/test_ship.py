"""Shipping trained models: float16 copies that load with the hash they record, and an adapter only when it was
trained on the shipped tokenizer's codes."""

import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from auralm.apps.shipping import TOKENIZER_FILES, ship_adapter, ship_tokenizer
from auralm.checkpoints import CheckpointError
from auralm.checkpoints.registry import SHIPPED_ADAPTER, SHIPPED_TOKENIZER
from auralm.lm import load_llm
from auralm.lm.loading import SOUND_TOKENS_FILE
from auralm.lm.vocabulary import CODES_KEY, HASH_KEY, add_sound_tokens
from auralm.lm.widening import WIDENING_WEIGHTS, Widening, cut_parts, load_widening, save_widening, widen
from auralm.tokenizer import SpeechTokenizer, load_audio
from auralm.tokenizer.token_format import sound_token
from auralm.training.ctc import HEAD_FILE as CTC_HEAD_FILE
from tests.conftest import DATA
from tests.training.conftest import tiny_llm


@pytest.fixture
def trained_tokenizer(tmp_path, tiny_tokenizer, tiny_whisper_file):
    """A tokenizer folder as a training run leaves it (float32), naming its backbone's file."""
    config = dataclasses.replace(tiny_tokenizer.config, whisper=str(tiny_whisper_file))
    tokenizer = SpeechTokenizer(config, tiny_tokenizer.whisper)
    tokenizer.bottleneck.load_state_dict(tiny_tokenizer.bottleneck.state_dict())
    return tokenizer.save_pretrained(tmp_path / "run" / "tokenizer")


def adapter_folder(path, tokenizer_hash: str):
    """A LoRA adapter of a tiny Llama, with the speech tokenizer hash a training run records."""
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    get_peft_model(llm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(
        path
    )
    (path / SOUND_TOKENS_FILE).write_text(json.dumps({HASH_KEY: tokenizer_hash}))
    (path / "README.md").write_text("peft's card")
    return path


def test_shipped_tokenizer_is_float16_and_encodes_as_it_loads(tmp_path, trained_tokenizer):
    folder = ship_tokenizer(trained_tokenizer, into=tmp_path / "shipped")
    assert folder == tmp_path / "shipped" / SHIPPED_TOKENIZER
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys() if "initted" not in k} == {"F16"}
    shipped = SpeechTokenizer.from_pretrained(folder)  # its recorded hash holds
    audio = load_audio(DATA / "en_16k.wav")
    original = SpeechTokenizer.from_pretrained(trained_tokenizer)
    agree = (shipped.encode(audio) == original.encode(audio)).float().mean()
    assert agree >= 0.9, agree  # float16 rounding moves few codes…
    assert shipped.tokenizer_hash != original.tokenizer_hash  # …but it is another tokenizer, and its hash says so


def test_an_adapter_ships_only_with_the_tokenizer_it_learned(tmp_path, trained_tokenizer):
    into = tmp_path / "shipped"
    shipped = SpeechTokenizer.from_pretrained(ship_tokenizer(trained_tokenizer, into=into))
    stale = adapter_folder(tmp_path / "stale", SpeechTokenizer.from_pretrained(trained_tokenizer).tokenizer_hash)
    with pytest.raises(CheckpointError, match="train it with tokenizer=default"):
        ship_adapter(stale, into=into)
    assert not (into / SHIPPED_ADAPTER).exists()

    source = adapter_folder(tmp_path / "good", shipped.tokenizer_hash)
    folder = ship_adapter(source, into=into)
    assert not (folder / "README.md").exists()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2"
    with (
        safe_open(source / "adapter_model.safetensors", "pt") as f32,
        safe_open(folder / "adapter_model.safetensors", "pt") as f16,
    ):
        assert set(f32.keys()) == set(f16.keys())
        for key in f32.keys():
            assert f16.get_tensor(key).dtype == torch.float16
            torch.testing.assert_close(f16.get_tensor(key).float(), f32.get_tensor(key), rtol=1e-3, atol=1e-4)


def test_a_widened_adapter_ships_in_float16_and_loads_as_it_was(tmp_path, trained_tokenizer):
    into = tmp_path / "shipped"
    shipped = SpeechTokenizer.from_pretrained(ship_tokenizer(trained_tokenizer, into=into))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    widening = Widening.of(llm.config, 8, 16, 0, first_sound=60)
    wide = widen(llm, widening)
    source = tmp_path / "wide"
    save_widening(cut_parts(wide.state_dict(), widening), widening, source)
    (source / SOUND_TOKENS_FILE).write_text(json.dumps({HASH_KEY: shipped.tokenizer_hash}))
    save_file({"weight": torch.zeros(39, 40)}, source / CTC_HEAD_FILE)  # letter CTC's, for training only
    folder = ship_adapter(source, into=into)
    assert not (folder / "adapter_config.json").exists() and not (folder / CTC_HEAD_FILE).exists()
    with safe_open(folder / WIDENING_WEIGHTS, "pt") as f16:
        assert {f16.get_slice(k).get_dtype() for k in f16.keys()} == {"F16"}
    ids = torch.tensor([[1, 2, 60, 61, 3]])
    with torch.no_grad():
        torch.testing.assert_close(load_widening(llm, folder)(ids).logits, wide(ids).logits, rtol=1e-2, atol=1e-2)


def test_a_shipped_adapter_leaves_out_the_tokenizer_that_loading_rebuilds(tmp_path, trained_tokenizer):
    into = tmp_path / "shipped"
    speech = SpeechTokenizer.from_pretrained(ship_tokenizer(trained_tokenizer, into=into))
    base = tiny_llm(tmp_path / "llm", tied=True)
    llm, tokenizer = load_llm(base)
    first_sound = len(tokenizer)
    add_sound_tokens(llm, tokenizer, speech)  # as a training run does
    widening = Widening.of(llm.config, 16, 16, 0, first_sound)
    wide = widen(llm, widening)
    source = tmp_path / "wide"
    save_widening(cut_parts(wide.state_dict(), widening), widening, source)
    tokenizer.save_pretrained(source)
    codes = speech.config.vocab_size
    (source / SOUND_TOKENS_FILE).write_text(json.dumps({HASH_KEY: speech.tokenizer_hash, CODES_KEY: codes}))

    folder = ship_adapter(source, into=into, llm=base)
    assert not any((folder / name).exists() for name in TOKENIZER_FILES)
    model, rebuilt = load_llm(base, adapter=folder)
    assert rebuilt.get_vocab() == AutoTokenizer.from_pretrained(source).get_vocab()
    ids = rebuilt(f"the {sound_token(0)}{sound_token(codes - 1)} cat", return_tensors="pt").input_ids
    assert ids[0, 1] == first_sound + 2 and ids[0, 2] == first_sound + 1 + codes  # start, end, then the codes
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, wide(ids).logits, rtol=1e-2, atol=1e-2)

    tokenizer.add_tokens(["<|extra|>"])  # a tokenizer loading would not rebuild so is kept
    tokenizer.save_pretrained(source)
    assert (ship_adapter(source, into=into, llm=base) / "tokenizer.json").is_file()
