"""The packaged Whisper weights, converted, against the original runtime (CTranslate2) and real speech."""

import shutil

import ctranslate2
import numpy as np
import pytest
import torch
import whisper
from whisper.model import Whisper

from auralm.checkpoints import WHISPER_MODELS
from auralm.checkpoints.ctranslate2 import read_model_bin
from auralm.checkpoints.whisper import whisper_state_dict_from_ctranslate2
from auralm.tokenizer import detect_language, load_audio, log_mel, transcribe, word_error_rate
from tests.conftest import DATA, ENGLISH_CLIPS, TEXTS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", list(WHISPER_MODELS))
def test_converted_state_dict_has_exactly_whispers_keys_and_shapes(name):
    dims, state_dict = whisper_state_dict_from_ctranslate2(read_model_bin(WHISPER_MODELS[name].paths()))
    expected = Whisper(dims).state_dict()
    assert state_dict.keys() == expected.keys()
    assert all(state_dict[k].shape == expected[k].shape for k in expected)


@pytest.mark.parametrize("fixture", ["whisper_tiny_en", "whisper_base"])
def test_encoder_and_greedy_tokens_match_ctranslate2(request, tmp_path, fixture):
    model = request.getfixturevalue(fixture)
    parts = WHISPER_MODELS["tiny.en" if fixture == "whisper_tiny_en" else "base"].paths()
    # CTranslate2 itself reads only a whole model.bin beside its config and vocabulary.
    for extra in parts[0].parent.glob("*.json"):
        shutil.copy(extra, tmp_path)
    shutil.copy(parts[0].parent / "vocabulary.txt", tmp_path)
    (tmp_path / "model.bin").write_bytes(b"".join(p.read_bytes() for p in parts))
    original = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")
    mel = log_mel(load_audio(DATA / "en_slow_22k.flac"), model.dims.n_mels)[None]  # (1, n_mels, 3000)
    features = ctranslate2.StorageView.from_array(mel.numpy())

    theirs = torch.from_numpy(np.array(original.encode(features)))
    ours = model.encoder(mel)
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-3)  # fp16 weights, fp32 compute on both sides

    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, language="en", task="transcribe")
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    their_tokens = original.generate(features, [prompt], beam_size=1)[0].sequences_ids[0]
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    assert whisper.decode(model, mel, options)[0].tokens == their_tokens


@pytest.mark.parametrize("name", ENGLISH_CLIPS)
def test_tiny_en_transcribes_each_english_clip(whisper_tiny_en, name):
    text = transcribe(whisper_tiny_en, load_audio(DATA / name)).text
    assert word_error_rate(TEXTS[name], text) < 0.25, text


def test_base_detects_german(whisper_base):
    probabilities = detect_language(whisper_base, load_audio(DATA / "de_16k.flac"))
    assert next(iter(probabilities)) == "de", list(probabilities.items())[:3]
    english = detect_language(whisper_base, load_audio(DATA / "en_slow_22k.flac"))
    assert next(iter(english)) == "en"


def test_long_audio_is_transcribed_window_by_window(whisper_tiny_en):
    gap = torch.zeros(16000)
    clips = ENGLISH_CLIPS * 2  # ~44 s with 1 s gaps: two windows, cut in a gap
    long = torch.cat([torch.cat([load_audio(DATA / name), gap]) for name in clips])
    result = transcribe(whisper_tiny_en, long)
    assert result.windows == 2
    assert word_error_rate(" ".join(TEXTS[name] for name in clips), result.text) < 0.25, result.text
