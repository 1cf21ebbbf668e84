"""`auralm merge` on a tiny random Llama with a LoRA adapter trained on sound tokens (as the LLM recipes save one):
the folder loads with plain transformers and gives the logits auralm's `load_llm` gives, keeps the sound-token ids
and the speech tokenizer pairing, and the command refuses a folder that already holds anything."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from auralm.apps.cli import main
from auralm.checkpoints import load_whisper
from auralm.lm import SpeechChat, SpeechTokenizerMismatchError, add_sound_tokens, load_llm, tokens_to_prompt
from auralm.lm.merge import MergeError, merge_speech_llm, readable_by_transformers_4
from auralm.lm.vocabulary import CODES_KEY, HASH_KEY, sound_vocabulary
from auralm.tokenizer import SpeechTokenizer
from tests.conftest import DATA, TINY_CONFIG, randomize
from tests.lm.conftest import save_sound_adapter, tiny_llama, tiny_text_tokenizer

CODES = [3, 17, 17, 64, 0, 42]  # a clip's sound codes, the mask code (64) included


@pytest.fixture(scope="module")
def speech_folders(tmp_path_factory, tiny_whisper_file) -> list[Path]:
    """Two tiny speech tokenizers with the same codebook size and different weights (so different hashes)."""
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # ResidualVQ draws its codebook from the global generator
        config = dataclasses.replace(TINY_CONFIG, whisper=str(tiny_whisper_file))
        tokenizer = SpeechTokenizer(config, load_whisper(str(tiny_whisper_file)))
        randomize(tokenizer.bottleneck, seed=seed)
        folders.append(tokenizer.save_pretrained(tmp_path_factory.mktemp("speech") / f"tok{seed}"))
    return folders


def speech_llm(folder: Path, speech: SpeechTokenizer, tied: bool) -> tuple[Path, Path, torch.nn.Module]:
    """(base LLM folder, adapter folder, the peft model in memory): LoRA plus trained sound-token rows, saved the
    way `auralm train pretrain` saves them (no whole embeddings, the tokenizer, sound_tokens.json)."""
    llm, tokenizer = tiny_llama(tied, initializer_range=1.0), tiny_text_tokenizer()
    lora = save_sound_adapter(folder, llm, tokenizer, speech, output_rows=not tied)
    return folder / "base", folder / "adapter", lora.eval()


@pytest.fixture(scope="module")
def merged(tmp_path_factory, speech_folders) -> tuple[Path, Path, Path]:
    """(base, adapter, merged folder) of an untied tiny speech LLM trained on speech_folders[0]'s tokens."""
    folder = tmp_path_factory.mktemp("llm")
    base, adapter, _ = speech_llm(folder, SpeechTokenizer.from_pretrained(speech_folders[0]), tied=False)
    return base, adapter, merge_speech_llm(base, adapter, out=folder / "merged")


@pytest.mark.parametrize("tied", [False, True])
@torch.no_grad()
def test_merged_folder_loads_with_plain_transformers_and_gives_auralms_logits(tmp_path, speech_folders, tied):
    speech = SpeechTokenizer.from_pretrained(speech_folders[0])
    base, adapter, lora = speech_llm(tmp_path, speech, tied)
    out = merge_speech_llm(base, adapter, out=tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names and not (tmp_path / "merged.partial").exists()

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    trained_tokenizer = AutoTokenizer.from_pretrained(adapter)
    vocabulary = sound_vocabulary(speech.config.vocab_size)
    assert tokenizer.convert_tokens_to_ids(vocabulary) == trained_tokenizer.convert_tokens_to_ids(vocabulary)
    prompt = tokens_to_prompt(CODES, "what is this sound ?", tokenizer)  # through the merged chat template
    assert prompt == tokens_to_prompt(CODES, "what is this sound ?", trained_tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    assert ids.tolist() == trained_tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.tolist()
    assert set(trained_tokenizer.convert_tokens_to_ids(vocabulary)) & set(ids[0].tolist())

    auralm_model, _ = load_llm(base, adapter=adapter)
    expected = auralm_model(ids).logits
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-6, atol=1e-6)  # the same float32 weights
    torch.testing.assert_close(expected, lora(ids).logits, rtol=1e-5, atol=1e-4)  # merging rounds a little
    untrained, untrained_tokenizer = load_llm(base)  # the adapter matters for this prompt
    add_sound_tokens(untrained, untrained_tokenizer, speech)
    assert not torch.allclose(untrained(ids).logits, expected, atol=1e-2)

    config, tokenizer_config = (
        json.loads((out / name).read_text()) for name in ("config.json", "tokenizer_config.json")
    )
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["rope_scaling"] is None
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # what transformers 4 reads…
    assert tokenizer_config["additional_special_tokens"] == ["<|user|>", "<|assistant|>"]
    assert tokenizer.all_special_tokens == trained_tokenizer.all_special_tokens  # …and transformers 5 too


def test_scaled_rope_is_written_for_transformers_4_too(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}  # fmt: skip
    LlamaConfig(max_position_embeddings=512, rope_parameters=rope).save_pretrained(tmp_path)
    tiny_text_tokenizer().save_pretrained(tmp_path)
    readable_by_transformers_4(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_theta"] == 5e5 and config["rope_scaling"] == {
        k: v for k, v in rope.items() if k != "rope_theta"
    }
    assert AutoConfig.from_pretrained(tmp_path).rope_parameters == rope


def test_merged_config_records_the_speech_tokenizer_and_speech_chat_checks_it(merged, speech_folders):
    speech = SpeechTokenizer.from_pretrained(speech_folders[0])
    config = json.loads((merged[2] / "config.json").read_text())
    assert (config[HASH_KEY], config[CODES_KEY]) == (speech.tokenizer_hash, speech.config.vocab_size)

    chat = SpeechChat.from_pretrained(llm=merged[2], checkpoint=speech_folders[0], device="cpu")
    audio = [{"type": "audio", "path": DATA / "en_8k.wav"}, {"type": "text", "text": "what is this sound ?"}]
    assert isinstance(chat.generate([{"role": "user", "content": audio}], max_new_tokens=2), str)
    with pytest.raises(SpeechTokenizerMismatchError, match="trained on sound tokens of speech tokenizer"):
        SpeechChat.from_pretrained(llm=merged[2], checkpoint=speech_folders[1], device="cpu")


def test_merge_command_writes_the_folder_and_refuses_one_that_holds_anything(capsys, merged, tmp_path):
    base, adapter, _ = merged
    out = tmp_path / "cli-merged"
    argv = ["merge", "--llm", str(base), "--adapter", str(adapter), "--out", str(out), "--dtype", "bfloat16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    recorded = json.loads((out / "config.json").read_text())
    assert str(out) in printed and recorded[HASH_KEY] in printed and f"vllm serve {out}" in printed
    assert recorded["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}

    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"auralm merge: error: {out}: already exists and is not empty; name a new folder, or delete this one first\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written

    plain = tmp_path / "plain"  # an LLM without sound tokens would hear nothing
    assert main(["merge", "--llm", str(base), "--out", str(plain)]) == 2
    assert "has no sound tokens" in capsys.readouterr().err and not plain.exists()


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "out").write_text("keep me")
    with pytest.raises(MergeError, match="already exists and is not empty"):
        merge_speech_llm("unused", out=tmp_path / "out")
    assert (tmp_path / "out").read_text() == "keep me"
