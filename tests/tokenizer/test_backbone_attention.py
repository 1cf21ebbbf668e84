"""Whisper with its attention routed through auralm's kernels keeps openai-whisper's outputs."""

import copy

import torch
import whisper

import auralm.kernels.attention as attention_module
from auralm.tokenizer import load_audio
from auralm.tokenizer.backbone import log_mel, use_flash_attention
from tests.conftest import DATA, TINY_WHISPER, randomize


@torch.no_grad()
def test_encoder_decoder_and_cached_decoding_unchanged(monkeypatch):
    tiny_whisper = whisper.model.Whisper(TINY_WHISPER)  # fresh: openai-whisper's own attention
    randomize(tiny_whisper, seed=0)
    mel = log_mel(load_audio(DATA / "en_16k.wav"), 80)[None]
    tokens = torch.tensor([[50257, 50362, 464, 2068, 7586]])
    expected_frames = tiny_whisper.encoder(mel)
    expected_logits = tiny_whisper.decoder(tokens, expected_frames)
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, sample_len=6)
    expected_tokens = whisper.decode(tiny_whisper, mel, options)[0].tokens

    swapped = use_flash_attention(copy.deepcopy(tiny_whisper))
    monkeypatch.setattr(attention_module, "_use_kernel", lambda q: True)  # the Triton kernel, interpreted on CPU
    frames = swapped.encoder(mel)
    torch.testing.assert_close(frames, expected_frames, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(swapped.decoder(tokens, frames), expected_logits, atol=1e-3, rtol=1e-4)
    assert whisper.decode(swapped, mel, options)[0].tokens == expected_tokens  # KV cache: one query at a time
