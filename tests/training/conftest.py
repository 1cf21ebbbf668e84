"""What the recipe tests share: the `auralm` command, a tiny random speech tokenizer and a tiny Llama that knows
the words of the test data, and a manifest of the test clips with their transcripts."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import soundfile
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from auralm.checkpoints import load_whisper
from auralm.tokenizer import SpeechTokenizer, load_audio
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT
from tests.conftest import DATA, TEXTS, TINY_CONFIG, randomize
from tests.lm.conftest import CHAT_TEMPLATE, WORDS

AURALM = [sys.executable, "-m", "auralm"]
REFUSAL = "I couldn't hear any speech in that."
CLIPS = sorted(TEXTS)  # 6 English clips and a German one
QUESTION = "what is this sound ?"


def tiny_speech_tokenizer(whisper_file: Path, seed: int) -> SpeechTokenizer:
    torch.manual_seed(seed)  # ResidualVQ draws its codebook from the global generator
    config = dataclasses.replace(TINY_CONFIG, whisper=str(whisper_file), window_seconds=10)
    tokenizer = SpeechTokenizer(config, load_whisper(str(whisper_file)))
    randomize(tokenizer.bottleneck, seed=seed)
    return tokenizer.eval()


@pytest.fixture(scope="session")
def speech_folder(tmp_path_factory, tiny_whisper_file) -> Path:
    return tiny_speech_tokenizer(tiny_whisper_file, seed=1).save_pretrained(tmp_path_factory.mktemp("speech") / "tok")


def tiny_llm(folder: Path, tied: bool) -> Path:
    """A random 2-layer Llama whose word-level tokenizer knows every word of the test data, with the tests'
    plain chat template (`<|user|> … <eos> <|assistant|> … <eos> `). No pad token in its config: transformers
    would zero that embedding row, and here the pad token is the end-of-turn token the assistant must say."""
    texts = [*TEXTS.values(), TRANSCRIBE_PROMPT, REFUSAL]
    words = list(dict.fromkeys(WORDS + " ".join(texts).split()))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=tied, eos_token_id=1,
        initializer_range=0.5,  # frozen text rows large enough that the adapter can make sharp predictions
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llm_folder(tmp_path_factory) -> Path:
    return tiny_llm(tmp_path_factory.mktemp("llm") / "tied", tied=True)


@pytest.fixture(scope="session")
def untied_llm_folder(tmp_path_factory) -> Path:
    return tiny_llm(tmp_path_factory.mktemp("llm") / "untied", tied=False)


def asr_manifest(folder: Path) -> Path:
    """8 ASR examples: the 7 clips, and the first 1.5 s of one of them with the words said by then."""
    short = folder / "short.wav"
    soundfile.write(short, load_audio(DATA / "en_16k.wav")[:24000].numpy(), 16000)
    lines = [{"audio": str(DATA / name), "text": TEXTS[name]} for name in CLIPS]
    lines.append({"audio": str(short), "text": "The children are"})
    path = folder / "asr.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
