"""SpeechTokenizer on tiny random weights: parity with vector-quantize-pytorch + openai-whisper,
batching, code counts, token strings, save/load and the hash."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import whisper
from safetensors.torch import load_file, save_file
from vector_quantize_pytorch import ResidualVQ

from auralm.checkpoints import CheckpointError
from auralm.tokenizer import SpeechTokenizer, TokenFormatError, load_audio, split_windows
from auralm.tokenizer.backbone import encode_mels
from tests.conftest import DATA, ENGLISH_CLIPS, TINY_CONFIG

GREEDY = (0.0,)  # random weights always "fail" the fallback thresholds; sampling would not be repeatable


def noise(seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(max(1, int(seconds * 16000)), generator=generator)).clamp(-1, 1)


def reference_codes(tokenizer: SpeechTokenizer, audio: torch.Tensor) -> torch.Tensor:
    """Ichigo's `quantize` rebuilt from its parts: openai-whisper's mel and encoder, mean-pool ×2,
    the residual MLP, and vector-quantize-pytorch's own ResidualVQ over all K + 1 codes."""
    b = tokenizer.bottleneck
    rq = ResidualVQ(
        dim=64, codebook_size=TINY_CONFIG.vocab_size, codebook_dim=16, num_quantizers=1, use_cosine_sim=True
    )
    rq.project_in.load_state_dict(b.rq.project_in.state_dict())
    rq.project_out.load_state_dict(b.rq.project_out.state_dict())
    rq.layers[0]._codebook.embed.copy_(b.codebook[None])
    rq.eval()
    mel = whisper.log_mel_spectrogram(audio, 80)
    frames = tokenizer.whisper.encoder(torch.nn.functional.pad(mel, (0, 3000 - mel.shape[-1]), value=-1.5)[None])
    x = frames.view(1, 750, 2, 64).mean(2)
    x = x + b.mlp(b.mlp_ln(x))
    _, indices, _ = rq(x)
    return indices[0, : mel.shape[-1] // 4, 0]  # Ichigo keeps ⌊n / 640⌋ codes


@torch.no_grad()
def test_codes_match_vector_quantize_pytorch_reference(tiny_tokenizer):
    same = total = 0
    for name in ENGLISH_CLIPS:
        audio = load_audio(DATA / name)
        ours = tiny_tokenizer.encode(audio)
        theirs = reference_codes(tiny_tokenizer, audio)
        assert len(ours) == tiny_tokenizer.num_codes(len(audio)) == len(theirs) + (len(audio) % 640 > 0)
        same += int((ours[: len(theirs)] == theirs).sum())
        total += len(theirs)
    assert same / total >= 0.999, f"{same} of {total} codes agree"


def test_batched_codes_equal_one_at_a_time(tiny_tokenizer):
    clips = [noise(3.3, 1), noise(0.0001, 2), noise(41.0, 3), load_audio(DATA / "en_16k.wav"), noise(0.9, 4)]
    batched = tiny_tokenizer.encode(clips, batch_size=3)
    for clip, codes in zip(clips, batched, strict=True):
        assert torch.equal(codes, tiny_tokenizer.encode(clip))


@pytest.mark.parametrize("samples", [1, 639, 640, 641, 16000, 480_000, 480_001])
def test_code_count_is_the_ceiling_of_samples_over_640(tiny_tokenizer, samples):
    codes = tiny_tokenizer.encode(noise(samples / 16000))
    assert codes.shape == (tiny_tokenizer.num_codes(samples),) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() <= TINY_CONFIG.mask_code


def test_95_second_clip_is_encoded_in_four_or_five_windows(tiny_tokenizer):
    audio = noise(95.0)
    assert 4 <= len(split_windows(audio, step=640)) <= 5
    assert len(tiny_tokenizer.encode(audio)) == tiny_tokenizer.num_codes(len(audio)) == 2375


def test_the_mask_code_is_emitted_where_nearest_and_round_trips(tiny_tokenizer):
    audio = noise(2.0)
    frames = tiny_tokenizer.whisper.encoder(
        torch.stack([torch.nn.functional.pad(whisper.log_mel_spectrogram(audio), (0, 2800), value=-1.5)])
    )
    b = tiny_tokenizer.bottleneck
    x = frames.view(1, 750, 2, 64).mean(2)
    z = b.rq.project_in(x + b.mlp(b.mlp_ln(x)))
    embed = b.state_dict()["rq.layers.0._codebook.embed"]  # (1, K + 1, dim), shares the module's storage
    with torch.no_grad():  # the mask code now points where most frames point
        embed[0, TINY_CONFIG.mask_code] = 100 * torch.nn.functional.normalize(z[0, :50].mean(0), dim=-1)
    codes = tiny_tokenizer.encode(audio)
    assert (codes == TINY_CONFIG.mask_code).sum() >= 10  # as Ichigo's search gives it
    string = tiny_tokenizer.to_string(codes)
    assert f"<|sound_{TINY_CONFIG.mask_code:04d}|>" in string
    assert torch.equal(tiny_tokenizer.from_string(string), codes)


def test_inputs_of_every_kind(tiny_tokenizer):
    path = DATA / "en_8k.wav"
    expected = tiny_tokenizer.encode(path)
    audio = load_audio(path)
    assert torch.equal(tiny_tokenizer.encode(str(path)), expected)
    assert torch.equal(tiny_tokenizer.encode(path.read_bytes()), expected)
    assert torch.equal(tiny_tokenizer.encode(audio), expected)
    assert torch.equal(tiny_tokenizer.encode(audio.numpy()), expected)
    stereo_48k = torch.from_numpy(np.stack([audio.numpy()] * 2)).repeat_interleave(3, dim=1)
    assert len(tiny_tokenizer.encode(stereo_48k, sample_rate=48000)) == len(expected)


# ---- token strings -------------------------------------------------------------------


def test_token_strings_round_trip(tiny_tokenizer):
    codes = tiny_tokenizer.encode(DATA / "en_8k.wav")
    text = tiny_tokenizer.to_string(codes)
    assert text.startswith("<|sound_start|><|sound_") and text.endswith("|><|sound_end|>")
    assert text.count("<|sound_") == len(codes) + 2
    assert torch.equal(tiny_tokenizer.from_string(f"  {text}\n"), codes)
    assert (
        tiny_tokenizer.to_string([7, 0, 63]) == "<|sound_start|><|sound_0007|><|sound_0000|><|sound_0063|><|sound_end|>"
    )
    assert tiny_tokenizer.from_string("<|sound_start|><|sound_end|>").tolist() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<|sound_0001|><|sound_end|>", "must start with"),
        ("<|sound_start|><|sound_0001|>", "must end with"),
        ("<|sound_start|><|sound_0001|> hello <|sound_end|>", "at character 29"),
        ("<|sound_start|><|sound_001|><|sound_end|>", "at character 15"),
        ("<|sound_start|><|sound_0065|><|sound_end|>", "code 65 .* out of range"),
        ("<|sound_start|><|sound_-001|><|sound_end|>", "expected"),
    ],
)
def test_malformed_token_strings_are_rejected(tiny_tokenizer, text, message):
    with pytest.raises(TokenFormatError, match=message):
        tiny_tokenizer.from_string(text)


def test_out_of_range_codes_are_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="0 … 64"):
        tiny_tokenizer.to_string([0, 65])
    with pytest.raises(ValueError, match="0 … 64"):
        tiny_tokenizer.decode_text([-1])


# ---- decoding to text ----------------------------------------------------------------


def test_decode_text_batched_equals_single(tiny_tokenizer):
    codes = tiny_tokenizer.encode([DATA / "en_8k.wav", DATA / "en_16k.wav"])
    batched = tiny_tokenizer.decode_text(codes, temperatures=GREEDY)
    assert isinstance(batched, list) and len(batched) == 2
    assert batched == [tiny_tokenizer.decode_text(c, temperatures=GREEDY) for c in codes]
    assert tiny_tokenizer.decode_text(codes[0].tolist(), temperatures=GREEDY) == batched[0]


def test_decoder_features_ignore_what_lies_past_the_codes(tiny_tokenizer):
    codes = torch.tensor([[3, 5, 7, 64, 64], [3, 5, 7, 1, 2]])  # 64 = mask code padding
    features = tiny_tokenizer.bottleneck.dequantize(codes)
    short = tiny_tokenizer.bottleneck.dequantize(codes[:1, :3])
    torch.testing.assert_close(features[0], short[0])
    assert not torch.allclose(features[1], short[0])


def test_long_code_sequences_decode_window_by_window(tiny_tokenizer):
    codes = torch.randint(0, 64, (800,), generator=torch.Generator().manual_seed(0))
    parts = tiny_tokenizer.decode_text([codes[:750], codes[750:]], temperatures=GREEDY)
    assert tiny_tokenizer.decode_text(codes, temperatures=GREEDY) == " ".join(p for p in parts if p)


# ---- checkpoints and the hash --------------------------------------------------------


def test_save_load_round_trip_keeps_codes_and_hash(tmp_path, tiny_tokenizer, tiny_whisper):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = SpeechTokenizer.from_pretrained(folder, whisper=tiny_whisper)
    assert loaded.config == tiny_tokenizer.config
    assert loaded.tokenizer_hash == tiny_tokenizer.tokenizer_hash
    audio = load_audio(DATA / "en_16k.wav")
    assert torch.equal(loaded.encode(audio), tiny_tokenizer.encode(audio))


def test_float16_save_loads_with_its_hash_and_changed_weights_are_refused(tmp_path, tiny_tokenizer, tiny_whisper_file):
    # a config that names its backbone's file, as a shipped tokenizer names tiny.en
    tokenizer = SpeechTokenizer(dataclasses.replace(tiny_tokenizer.config, whisper=str(tiny_whisper_file)),
                                tiny_tokenizer.whisper)  # fmt: skip
    tokenizer.bottleneck.load_state_dict(tiny_tokenizer.bottleneck.state_dict())
    full = tokenizer.save_pretrained(tmp_path / "full")
    half = tokenizer.save_pretrained(tmp_path / "half", dtype=torch.float16)
    weights = load_file(half / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = SpeechTokenizer.from_pretrained(half)  # the named backbone; the recorded hash must match
    assert (
        loaded.tokenizer_hash
        == tokenizer.tokenizer_hash
        == json.loads((half / "config.json").read_text())["tokenizer_hash"]
    )
    audio = load_audio(DATA / "en_16k.wav")
    assert torch.equal(loaded.encode(audio), tokenizer.encode(audio))

    weights["mlp.0.weight"] += 0.01
    save_file(weights, half / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"do not match the hash in config\.json"):
        SpeechTokenizer.from_pretrained(half)
    SpeechTokenizer.from_pretrained(half, whisper=tiny_whisper_file)  # another backbone named: no hash to hold


def test_hash_follows_the_weights_that_decide_codes(tiny_tokenizer):
    before = tiny_tokenizer.tokenizer_hash
    assert before == tiny_tokenizer.tokenizer_hash and len(before) == 64
    with torch.no_grad():
        tiny_tokenizer.bottleneck.ln_post.weight.add_(1.0)  # decode side only: codes unchanged
    assert tiny_tokenizer.tokenizer_hash == before
    with torch.no_grad():
        tiny_tokenizer.bottleneck.mlp[0].weight[0, 0] += 1e-3
    assert tiny_tokenizer.tokenizer_hash != before


def test_loading_errors_name_the_file(tmp_path, tiny_tokenizer, tiny_whisper):
    with pytest.raises(CheckpointError, match="no such tokenizer"):
        SpeechTokenizer.from_pretrained(tmp_path / "missing", whisper=tiny_whisper)
    with pytest.raises(CheckpointError, match="not a tokenizer folder"):
        SpeechTokenizer.from_pretrained(tmp_path, whisper=tiny_whisper)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{text}: not a PyTorch checkpoint"):
        SpeechTokenizer.from_pretrained(text, whisper=tiny_whisper)
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    wide = whisper.model.Whisper(whisper.model.ModelDimensions(80, 1500, 128, 2, 1, 51864, 24, 128, 2, 1))
    with pytest.raises(CheckpointError, match="width 64"):
        SpeechTokenizer.from_pretrained(folder, whisper=wide)


def test_codes_are_the_same_with_the_triton_kernels(tiny_tokenizer, monkeypatch):
    """Nearest-code search and every attention (Whisper's and the block's) through Triton."""
    import auralm.kernels.attention as attention_module
    from auralm.kernels.vq import nearest_code_triton
    from auralm.tokenizer import bottleneck

    clips = [load_audio(DATA / name) for name in ENGLISH_CLIPS[:3]]
    with_torch = tiny_tokenizer.encode(clips)
    features = tiny_tokenizer.bottleneck.dequantize(with_torch[0][None])
    monkeypatch.setattr(bottleneck, "nearest_code", lambda x, c, metric: nearest_code_triton(x, c, metric)[0])
    monkeypatch.setattr(attention_module, "_use_kernel", lambda q: True)
    assert all(torch.equal(a, b) for a, b in zip(tiny_tokenizer.encode(clips), with_torch, strict=True))
    torch.testing.assert_close(
        tiny_tokenizer.bottleneck.dequantize(with_torch[0][None]), features, atol=1e-4, rtol=1e-4
    )


# ---- shorter windows and the training path --------------------------------------------


def test_encoder_on_a_full_window_is_whispers_own(tiny_tokenizer):
    mel = tiny_tokenizer.log_mel(noise(7.0))[None]
    torch.testing.assert_close(encode_mels(tiny_tokenizer.whisper, mel), tiny_tokenizer.whisper.encoder(mel))


def test_a_ten_second_window_tokenizer(tiny_whisper):
    torch.manual_seed(1)
    tokenizer = SpeechTokenizer(dataclasses.replace(TINY_CONFIG, window_seconds=10), tiny_whisper).eval()
    clip = noise(23.3)
    windows = tokenizer.windows(clip)
    assert len(windows) == 3 and all(w.end - w.start <= 10 * 16000 for w in windows)
    assert tokenizer.log_mel(clip[:16000]).shape == (80, 1000)
    codes = tokenizer.encode(clip)
    assert len(codes) == tokenizer.num_codes(len(clip)) == 583
    # each window's codes are those of its own 10 s encoder pass (500 frames → 250 codes)
    first = tokenizer.encode_windows(tokenizer.log_mel(clip[windows[0].start : windows[0].end])[None])
    n = windows[0].end // 640
    assert first.shape == (1, 250) and torch.equal(codes[:n], first[0, :n])
    assert tokenizer.bottleneck.dequantize(codes[None, :250]).shape == (1, 500, 64)
    assert isinstance(tokenizer.decode_text(codes, temperatures=GREEDY), str)


def test_training_path_passes_gradients_straight_through(tiny_tokenizer):
    b = tiny_tokenizer.bottleneck.train()
    frames = torch.randn(2, 1500, 64)
    code_mask = torch.ones(2, 750, dtype=torch.bool)
    code_mask[1, 100:] = False  # the second window holds 4 s of speech
    out = b(frames, code_mask)
    assert out.features.shape == (2, 1500, 64) and out.codes.shape == (2, 750) and out.commitment.dim() == 0
    (out.features.square().mean() + out.commitment).backward()
    assert b.mlp[0].weight.grad.abs().sum() > 0 and b.positional_embedding.weight.grad.abs().sum() > 0
    # past the speech, the decoder sees the mask code's row, as dequantize pads
    b.eval()  # (the training step above moved the codebook)
    with torch.no_grad():
        out = b(frames, code_mask)
        padded = b.dequantize(out.codes[1:, :100])[0]
    assert torch.equal(out.codes, b.quantize(frames))
    torch.testing.assert_close(out.features[1], padded, atol=1e-5, rtol=1e-5)
