"""Text from Whisper's decoder is bounded and clean, and the language asked for is one the model speaks
(real tiny.en and base weights)."""

import pytest
import torch

from auralm import AuralmError
from auralm.tokenizer import SpeechTokenizer, load_audio, transcribe
from auralm.tokenizer.backbone import decode_with_fallback, resolve_language, text_token_budget
from tests.conftest import DATA

pytestmark = pytest.mark.integration


def test_an_untrained_tokenizer_decodes_briefly_to_words_only(tokenizer_folder, whisper_tiny_en):
    # A random bottleneck on the real tiny.en: Whisper's decoder reads noise and, unbounded, loops on
    # special tokens for its whole 224-token budget at every fallback temperature (minutes a clip).
    tokenizer = SpeechTokenizer.from_pretrained(tokenizer_folder, whisper=whisper_tiny_en)
    codes = tokenizer.encode(load_audio(DATA / "en_16k.wav"))[:50]  # 2 s
    features = tokenizer.bottleneck.dequantize(codes[None])
    results = decode_with_fallback(tokenizer.whisper, features, "en", seconds=2.0)
    budget = text_token_budget(tokenizer.whisper, 2.0)
    assert budget == 16 + 20 and all(len(r.tokens) <= budget for r in results)
    assert "<|" not in tokenizer.decode_text(codes, temperatures=(0.0,))


def test_special_tokens_are_dropped_from_the_text(whisper_tiny_en):
    # Features that make the decoder emit <|notimestamps|> and friends: a constant vector.
    features = torch.full((1, 1500, 384), 3.0)
    (result,) = decode_with_fallback(whisper_tiny_en, features, "en", temperatures=(0.0,), seconds=4.0)
    assert "<|" not in result.text


def test_an_english_only_model_refuses_other_languages(whisper_tiny_en):
    audio = load_audio(DATA / "de_16k.flac")
    with pytest.raises(AuralmError, match=r"English-only .* Vietnamese"):
        transcribe(whisper_tiny_en, audio, language="vi")
    with pytest.raises(AuralmError, match="unknown language 'xx'"):
        transcribe(whisper_tiny_en, audio, language="xx")
    assert resolve_language(whisper_tiny_en, None) == resolve_language(whisper_tiny_en, "English") == "en"
    assert transcribe(whisper_tiny_en, load_audio(DATA / "en_16k.wav")).language == "en"


def test_languages_by_name_or_code_on_a_multilingual_model(whisper_base):
    assert resolve_language(whisper_base, "German") == resolve_language(whisper_base, "de") == "de"
    assert resolve_language(whisper_base, None) is None  # detected per window
    assert transcribe(whisper_base, load_audio(DATA / "de_16k.flac"), language="german").language == "de"
