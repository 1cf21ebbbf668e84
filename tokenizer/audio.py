"""Audio input: any file, bytes or array → float32 mono 16 kHz in [-1, 1]; long audio → ≤ 30 s windows; a file
checked from its header alone (`probe_audio`); silence told apart from sound (`is_silent`).

Decoding uses soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3, …), so no
ffmpeg is needed. Every failure is an `AudioError` whose message starts with the
input's name and says what is wrong.
"""

from __future__ import annotations

import io
import os
import struct
from fractions import Fraction
from typing import BinaryIO, NamedTuple

import numpy as np
import soundfile
import torch
import torchaudio.functional

from auralm.errors import AuralmError
from auralm.tokenizer.config import WHISPER_SECONDS

SAMPLE_RATE = 16_000  # Whisper's input rate
MIN_WINDOW_SECONDS = 20.0  # cuts are searched for in the last 10 s of a window
QUIET_SECONDS = 0.1  # the span whose energy decides where to cut
MIN_SAMPLE_RATE = 8_000  # telephone speech; below it speech is unintelligible
MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces record at
MAX_CHANNELS = 32  # more is a misread array (samples taken for channels), not a recording
DEFAULT_MAX_SECONDS = 3600.0  # decoding more at once costs GBs; raise it for long recordings
# The longest clip a conversation or a transcription takes: SpeechChat, `auralm chat`, `auralm transcribe`,
# `auralm whisper` (--max-audio-seconds) and the servers (`auralm serve --max-audio-seconds`, the web demo).
# 300 s are 7,500 sound tokens at 25 a second: with a reply, within an 8,192-token context.
MAX_AUDIO_SECONDS = 300.0
# A clip is silence when no QUIET_SECONDS (0.1 s) span of it reaches this RMS level, in dB of full scale:
# digital silence and a quiet room's hiss (about −60 dBFS) are below, whispered speech (−40 dBFS and up) and
# a single click are above. `is_silent`.
SILENCE_DBFS = -50.0
MAX_RESAMPLE_DENOMINATOR = 1000  # odd rates (22051 Hz) are resampled via a ratio this simple
UNKNOWN_WAV_SIZE = 0x7FFF0000  # WAV data sizes from here up mean "streamed, length unknown"
# Files a folder is searched for (what libsndfile decodes).
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64", ".rf64"}

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray | torch.Tensor


class AudioError(AuralmError):
    """Audio that cannot be used; the message names the input and the problem."""


class Window(NamedTuple):
    """A span [start, end) of a 16 kHz clip, in samples."""

    start: int
    end: int


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    name: str | None = None,
) -> torch.Tensor:
    """Decode, mix to mono and resample to 16 kHz.

    source: a path, the bytes of an audio file, a binary file object, or an array
        (numpy or torch) of shape (samples,) or (channels, samples) with `sample_rate`.
        Integer arrays are scaled from their full range.
    max_seconds: longer audio is refused before it is decoded.
    name: what error messages call the input (default: its path, or a description).
    Returns: float32 tensor (samples,), values in [-1, 1].
    """
    is_array = isinstance(source, (np.ndarray, torch.Tensor))
    name = name or _describe(source)
    if is_array:
        if sample_rate is None:
            raise AudioError(f"{name}: pass sample_rate= with an array")
        samples = _array_to_float(source, name)
    else:
        if sample_rate is not None:
            raise AudioError(f"{name}: sample_rate= is only for arrays; a file carries its own rate")
        samples, sample_rate = _decode(source, name, max_seconds)
    return _to_mono_16k(samples, sample_rate, name, max_seconds)


def split_windows(
    audio: torch.Tensor,
    max_seconds: float = WHISPER_SECONDS,
    min_seconds: float = MIN_WINDOW_SECONDS,
    quiet_seconds: float = QUIET_SECONDS,
    step: int = 1,
) -> list[Window]:
    """Cut a 16 kHz clip into windows of at most `max_seconds`, covering it end to end.

    Each cut lands at the quietest `quiet_seconds` span between `min_seconds` and
    `max_seconds` into the window (so no word is cut in half), on a multiple of `step`
    samples from the clip's start: a tokenizer passes its samples per code, so the
    windows' codes concatenate to exactly the clip's ⌈n / step⌉ codes. Among equally
    quiet cuts the latest wins, which makes fewer windows.

    audio: (samples,). Returns the windows in order; none for an empty clip.
    """
    n = audio.shape[-1]
    max_len = int(max_seconds * SAMPLE_RATE) // step * step
    min_len = int(min_seconds * SAMPLE_RATE) // step * step
    if not 0 < min_len <= max_len:
        raise ValueError(
            f"need 0 < min_seconds <= max_seconds (≥ {step / SAMPLE_RATE} s), got {min_seconds}, {max_seconds}"
        )
    half_span = int(quiet_seconds * SAMPLE_RATE) // 2
    # energy[i] = sum of squares of audio[:i]; float64 keeps an hour of samples exact enough.
    energy = torch.nn.functional.pad(audio.double().square().cumsum(0), (1, 0))

    windows, start = [], 0
    while n - start > max_len:
        cuts = torch.arange(start + min_len, start + max_len + 1, step)
        quietness = energy[(cuts + half_span).clamp(max=n)] - energy[(cuts - half_span).clamp(max=n)]
        latest_quietest = len(cuts) - 1 - int(torch.argmin(quietness.flip(0)))
        cut = int(cuts[latest_quietest])
        windows.append(Window(start, cut))
        start = cut
    if n > start:
        windows.append(Window(start, n))
    return windows


def probe_audio(path: str | os.PathLike, max_seconds: float = DEFAULT_MAX_SECONDS) -> float:
    """Check an audio file from its header, without decoding it: it exists, libsndfile reads it, and its channels,
    sample rate and length (at most max_seconds) are usable. Returns its length in seconds. Raises the AudioError
    load_audio would; a file that passes may still turn out truncated or corrupt when it is decoded.

    The front ends check their files this way before they load any model, so a typo costs no start-up.
    """
    name = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{name}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    info = _info(name, name)
    _check_header(info, name, max_seconds)
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {info.samplerate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz; "
            "is it the rate of this audio?"
        )
    return info.frames / info.samplerate


def check_seconds(seconds: float, max_seconds: float, name: str) -> None:
    """The one length rule of every front end: audio over max_seconds is an AudioError naming the limit."""
    if seconds > max_seconds:
        raise AudioError(
            f"{name}: {seconds:.0f} s long, over the {max_seconds:.0f} s limit; "
            "split it, or raise the limit (--max-audio-seconds; max_seconds= in Python)"
        )


def is_silent(audio: torch.Tensor, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """Whether a 16 kHz clip (samples,) in [-1, 1] holds no sound to hear: no QUIET_SECONDS (0.1 s) span of it
    reaches threshold_dbfs in RMS (see SILENCE_DBFS). Spans overlap by half, and the clip's last span counts too.
    An empty clip is silent."""
    n = audio.shape[-1]
    if n == 0:
        return True
    span = max(1, min(n, round(QUIET_SECONDS * SAMPLE_RATE)))
    power = audio.detach().reshape(1, 1, -1).float().square()
    loudest = torch.nn.functional.avg_pool1d(power, span, stride=max(1, span // 2)).max()
    loudest = torch.maximum(loudest, power[..., n - span :].mean())
    return bool(loudest < 10 ** (threshold_dbfs / 10))


def is_loaded_audio(item: AudioSource, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether `item` is already what load_audio makes: a non-empty (samples,) float32 CPU tensor at
    16 kHz within [-1, 1] (NaN fails the comparison), such as a server's decoded upload."""
    return (
        isinstance(item, torch.Tensor)
        and sample_rate == SAMPLE_RATE
        and item.dtype == torch.float32
        and item.dim() == 1
        and item.device.type == "cpu"
        and len(item) > 0
        and bool(item.abs().max() <= 1)
    )


def _info(file: str | BinaryIO, name: str):
    """soundfile's header information (format, channels, rate, frames), or the AudioError of an unreadable file."""
    try:
        return soundfile.info(file)
    except (soundfile.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioError(
            f"{name}: not a readable audio file ({_reason(e)}); supported: wav, flac, ogg, opus, mp3, …"
        ) from e


def _check_header(info, name: str, max_seconds: float) -> None:
    if info.samplerate > 0:
        check_seconds(info.frames / info.samplerate, max_seconds, name)
    _check_channels(info.channels, name)


def _describe(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of audio>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<array {tuple(source.shape)}>"
    return str(getattr(source, "name", f"<{type(source).__name__}>"))


def _decode(source: AudioSource, name: str, max_seconds: float) -> tuple[torch.Tensor, int]:
    """Decode a file, bytes or stream to (channels, samples) float32 and its rate."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise AudioError(f"{name}: no such file")
        if os.path.isdir(source):
            raise AudioError(f"{name}: is a directory, not an audio file")
        with open(source, "rb") as f:
            data = f.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise AudioError(f"{name}: file object must be opened in binary mode ('rb')")
    else:
        raise AudioError(
            f"{name}: expected a path, bytes, a binary file object or an array, got {type(source).__name__}"
        )
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")

    info = _info(io.BytesIO(data), name)
    _check_header(info, name, max_seconds)
    try:
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (samples, channels)
    except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
        raise AudioError(f"{name}: corrupt or truncated audio ({_reason(e)})") from e
    declared = _declared_wav_bytes(data) if info.format in ("WAV", "WAVEX") else None
    if declared is not None and declared > len(data):
        raise AudioError(f"{name}: truncated: the header promises {declared} bytes, the file has {len(data)}")
    if info.format == "OGG" and not _ogg_ends_stream(data):
        raise AudioError(f"{name}: truncated: the Ogg stream stops before its last page")
    # Compressed formats report their length from headers; a stream that ends early decodes short.
    # MP3 lengths are estimates to a frame or two (1152 samples each), hence the slack.
    if info.frames - len(samples) > 2 * 1152 + info.frames // 100:
        raise AudioError(f"{name}: truncated: decoded {len(samples)} of {info.frames} samples")
    return torch.from_numpy(samples.T.copy()), sample_rate


def _reason(error: Exception) -> str:
    """libsndfile's own words, without its 'Error opening <repr of a BytesIO>:' preamble."""
    return str(error).rsplit(": ", 1)[-1].strip() or type(error).__name__


def _declared_wav_bytes(data: bytes) -> int | None:
    """The file size a RIFF/WAVE header promises up to the end of its 'data' chunk, if it says."""
    offset = 12  # "RIFF" <size> "WAVE"
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            # Streaming writers (ffmpeg, espeak --stdout) leave 0 or a size near 2³¹ or 2³².
            return None if size == 0 or size >= UNKNOWN_WAV_SIZE else offset + 8 + size
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def _ogg_ends_stream(data: bytes) -> bool:
    """Whether the last Ogg page carries the end-of-stream flag (header type bit 2), as a whole file's does."""
    last_page = data.rfind(b"OggS")
    return last_page >= 0 and last_page + 5 < len(data) and bool(data[last_page + 5] & 0x04)


def _array_to_float(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """(samples,) or (channels, samples) of any real dtype → float32 (channels, samples)."""
    samples = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array).detach().cpu()
    if samples.dtype.is_complex or samples.dtype == torch.bool:
        raise AudioError(f"{name}: audio samples must be real numbers, got {samples.dtype}")
    if not samples.dtype.is_floating_point:
        samples = _scale_integers(samples, name)
    if samples.dim() == 1:
        samples = samples[None]
    if samples.dim() != 2:
        raise AudioError(
            f"{name}: audio arrays are (samples,) or (channels, samples), got shape {tuple(samples.shape)}"
        )
    return samples.float()


def _scale_integers(samples: torch.Tensor, name: str) -> torch.Tensor:
    if samples.dtype == torch.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (samples.float() - 128) / 128
    full_scale = {torch.int8: 2**7, torch.int16: 2**15, torch.int32: 2**31}.get(samples.dtype)
    if full_scale is None:
        raise AudioError(f"{name}: unsupported sample type {samples.dtype}; use float32 or int16")
    return samples.double().div(full_scale).float()


def _check_channels(channels: int, name: str) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(
            f"{name}: {channels} channels; at most {MAX_CHANNELS} make sense "
            "(arrays are (channels, samples): transpose a (samples, channels) one)"
        )


def _to_mono_16k(samples: torch.Tensor, sample_rate: int, name: str, max_seconds: float) -> torch.Tensor:
    """(channels, samples) float32 at any rate → (samples,) at 16 kHz, checked and clamped to [-1, 1]."""
    if not isinstance(sample_rate, (int, np.integer)) or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz; "
            "is it the rate of this audio?"
        )
    _check_channels(samples.shape[0], name)
    if samples.shape[1] == 0:
        raise AudioError(f"{name}: contains no samples")
    check_seconds(samples.shape[1] / sample_rate, max_seconds, name)
    if not torch.isfinite(samples).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    mono = samples.mean(dim=0)
    if sample_rate != SAMPLE_RATE:
        # torchaudio's kernel grows with the reduced ratio's terms: 22051 → 16000 would be
        # 22051 × 16000 taps. A ratio within 1e-6 of it changes nothing audible.
        ratio = Fraction(SAMPLE_RATE, int(sample_rate)).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
        mono = torchaudio.functional.resample(mono, ratio.denominator, ratio.numerator)
    return mono.clamp(-1.0, 1.0).contiguous()
