"""Audio input: every source type and format, resampling, mixing, and every kind of bad input."""

import io
import math
import struct
import wave

import numpy as np
import pytest
import soundfile
import torch

from auralm.tokenizer import AudioError, load_audio
from auralm.tokenizer.audio import MAX_CHANNELS, SAMPLE_RATE
from tests.conftest import DATA, TEXTS


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(audio: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(audio.double() * torch.hann_window(len(audio), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * SAMPLE_RATE / len(audio)


def write(path, samples, rate, **kw):
    soundfile.write(path, samples, rate, **kw)
    return path


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_fixture_decodes_to_16k_mono(name):
    path = DATA / name
    info = soundfile.info(path)
    audio = load_audio(path)
    assert audio.dtype == torch.float32 and audio.dim() == 1
    assert audio.abs().max() <= 1.0 and audio.abs().max() > 0.05
    # MP3 and Opus add encoder delay and padding; a few ms either way.
    assert len(audio) == pytest.approx(info.frames * SAMPLE_RATE / info.samplerate, abs=0.03 * SAMPLE_RATE)


def test_every_source_type_gives_the_same_samples(tmp_path):
    path = DATA / "en_16k.wav"
    expected = load_audio(path)
    raw = path.read_bytes()
    samples, rate = soundfile.read(path, dtype="int16")
    with open(path, "rb") as f:
        from_file = load_audio(f)
    for got in (
        load_audio(str(path)),
        load_audio(raw),
        load_audio(bytearray(raw)),
        load_audio(memoryview(raw)),
        from_file,
        load_audio(samples, rate),
        load_audio(torch.from_numpy(samples), rate),
        load_audio(samples.astype(np.float32) / 32768, rate),
        load_audio(np.stack([samples, samples]), rate),  # (channels, samples)
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_integer_arrays_scale_from_full_range():
    for dtype, full_scale, offset in (
        (np.int16, 2**15, 0),
        (np.int32, 2**31, 0),
        (np.uint8, 128, 128),
        (np.int8, 128, 0),
    ):
        half = np.full(100, full_scale // 2 + offset, dtype=dtype)
        torch.testing.assert_close(load_audio(half, SAMPLE_RATE), torch.full((100,), 0.5))


@pytest.mark.parametrize("rate", [8000, 22050, 22051, 44100, 48000, 96000])
def test_resampling_keeps_frequency_and_duration(rate):
    audio = load_audio(sine(440.0, rate, 2.0), rate)
    assert len(audio) == pytest.approx(2.0 * SAMPLE_RATE, abs=2)
    assert peak_frequency(audio) == pytest.approx(440.0, abs=1.0)
    assert audio.abs().max() == pytest.approx(0.5, abs=0.02)


def test_stereo_is_mixed_to_the_mean_of_its_channels():
    left, right = sine(300.0, SAMPLE_RATE, 1.0), sine(700.0, SAMPLE_RATE, 1.0, amplitude=0.25)
    torch.testing.assert_close(load_audio(np.stack([left, right]), SAMPLE_RATE), torch.from_numpy((left + right) / 2))
    cancelling = load_audio(np.stack([left, -left]), SAMPLE_RATE)
    assert cancelling.abs().max() == 0


def test_out_of_range_floats_are_clamped():
    audio = load_audio(np.array([2.0, -3.0, 0.5], dtype=np.float32), SAMPLE_RATE)
    assert audio.tolist() == [1.0, -1.0, 0.5]


def test_silence_and_very_short_clips_are_valid():
    assert load_audio(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE).abs().max() == 0
    assert len(load_audio(np.zeros(1, np.float32), SAMPLE_RATE)) == 1
    assert len(load_audio(sine(440, 48000, 0.01), 48000)) == 160  # 10 ms


def test_streamed_wav_with_unknown_length_is_not_called_truncated(tmp_path):
    # ffmpeg/espeak --stdout write 0xFFFFFFFF or ~2³¹ as the data size when streaming.
    pcm = (sine(440, SAMPLE_RATE, 0.5) * 32767).astype("<i2").tobytes()
    for size in (0xFFFFFFFF, 0x7FFFF000):
        header = (
            b"RIFF" + struct.pack("<I", size) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        )
        streamed = header + b"data" + struct.pack("<I", size) + pcm
        assert len(load_audio(streamed)) == len(pcm) // 2


# ---- bad input: each case raises AudioError whose message names the input ----


def assert_audio_error(source, match: str, expected_name: str, **kw):
    with pytest.raises(AudioError, match=match) as raised:
        load_audio(source, **kw)
    assert str(raised.value).startswith(str(expected_name)), raised.value


def test_missing_file(tmp_path):
    assert_audio_error(tmp_path / "nope.wav", "no such file", tmp_path / "nope.wav")


def test_directory(tmp_path):
    assert_audio_error(tmp_path, "is a directory", tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert_audio_error(tmp_path / "empty.wav", "empty file", tmp_path / "empty.wav")


@pytest.mark.parametrize(
    "content",
    [b"hello, this is a text file and not audio at all\n" * 20, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8],
    ids=["text", "png"],
)
def test_not_audio_renamed_wav(tmp_path, content):
    path = tmp_path / "fake.wav"
    path.write_bytes(content)
    assert_audio_error(path, "not a readable audio file", path)


@pytest.mark.parametrize("name", ["en_16k.wav", "en_slow_22k.flac", "en_stereo_44k.mp3", "en_fast_24k.ogg"])
def test_truncated_files(tmp_path, name):
    data = (DATA / name).read_bytes()
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[: len(data) // 2])
    assert_audio_error(path, "truncated|corrupt|not a readable", path)


def test_truncated_inside_the_header(tmp_path):
    path = tmp_path / "header_only.flac"
    path.write_bytes((DATA / "en_slow_22k.flac").read_bytes()[:30])
    assert_audio_error(path, "not a readable audio file", path)


def test_corrupt_payload(tmp_path):
    data = bytearray((DATA / "en_slow_22k.flac").read_bytes())
    data[2000:] = bytes(len(data) - 2000)  # frames overwritten with zeros
    path = tmp_path / "zeroed.flac"
    path.write_bytes(bytes(data))
    assert_audio_error(path, "corrupt|truncated", path)


def test_file_with_zero_samples(tmp_path):
    path = tmp_path / "no_samples.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    assert_audio_error(path, "no samples", path)


def test_array_with_zero_samples():
    assert_audio_error(np.zeros(0, np.float32), "no samples", "<array (0,)>", sample_rate=SAMPLE_RATE)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_samples(bad):
    samples = np.zeros(100, np.float32)
    samples[50] = bad
    assert_audio_error(samples, "NaN or infinite", "clip.raw", sample_rate=SAMPLE_RATE, name="clip.raw")


@pytest.mark.parametrize("rate", [4000, 7999, 10_000_000])
def test_sample_rate_out_of_range_in_arrays(rate):
    assert_audio_error(np.zeros(rate // 10 + 1, np.float32), "sample rate", "<array", sample_rate=rate)


def test_sample_rate_out_of_range_in_files(tmp_path):
    path = write(tmp_path / "4k.wav", sine(440, 4000, 0.5), 4000)
    assert_audio_error(path, "sample rate 4000 Hz", path)


def test_too_many_channels_in_a_file(tmp_path):
    path = write(tmp_path / "many.wav", np.zeros((1000, MAX_CHANNELS + 8), np.float32), SAMPLE_RATE)
    assert_audio_error(path, f"{MAX_CHANNELS + 8} channels", path)


def test_array_in_samples_channels_order_gets_a_hint():
    with pytest.raises(AudioError, match="transpose"):
        load_audio(np.zeros((SAMPLE_RATE, 2), np.float32), SAMPLE_RATE)


def test_too_long_is_refused_before_decoding(tmp_path):
    path = write(tmp_path / "long.flac", np.zeros(SAMPLE_RATE * 5, np.float32), SAMPLE_RATE)
    assert_audio_error(path, "over the 2 s limit", path, max_seconds=2)
    assert_audio_error(
        np.zeros(SAMPLE_RATE * 5, np.float32), "over the 2 s limit", "<array", sample_rate=SAMPLE_RATE, max_seconds=2
    )


def test_wrong_argument_combinations(tmp_path):
    assert_audio_error(np.zeros(10, np.float32), "pass sample_rate", "<array")
    assert_audio_error(DATA / "en_16k.wav", "only for arrays", DATA / "en_16k.wav", sample_rate=16000)
    assert_audio_error(np.zeros((2, 2, 10), np.float32), "shape", "<array", sample_rate=SAMPLE_RATE)
    assert_audio_error(np.zeros(10, np.complex64), "real numbers", "<array", sample_rate=SAMPLE_RATE)
    assert_audio_error(12345, "expected a path", "<int>")
    with open(DATA / "texts.json") as text_mode:
        assert_audio_error(text_mode, "binary mode", text_mode.name)


def test_file_objects_are_named_in_errors(tmp_path):
    buffer = io.BytesIO(b"not audio" * 100)
    buffer.name = "upload.mp3"
    assert_audio_error(buffer, "not a readable", "upload.mp3")


def test_silence_is_no_span_louder_than_minus_50_dbfs():
    from auralm.tokenizer.audio import is_silent

    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE).astype(np.float32))
    assert is_silent(torch.zeros(5 * SAMPLE_RATE)) and is_silent(torch.zeros(0)) and is_silent(torch.zeros(10))
    assert is_silent(noise * 10**-3)  # a quiet room's hiss, −60 dBFS
    assert not is_silent(noise * 10**-2)  # −40 dBFS: whispered speech is louder
    assert not is_silent(load_audio(DATA / "en_16k.wav"))
    click, late = torch.zeros(5 * SAMPLE_RATE), torch.zeros(5 * SAMPLE_RATE)
    click[SAMPLE_RATE] = 0.5
    late[-100:] = 0.05  # sound in the clip's last few milliseconds counts too
    assert not is_silent(click) and not is_silent(late)
