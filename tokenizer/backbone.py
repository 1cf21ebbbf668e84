"""The frozen Whisper backbone at work: log-mel features, batched transcription, language detection.

These are the references a speech tokenizer is judged against: its tokens decoded
to text should read like what Whisper itself transcribes from the audio.
"""

from __future__ import annotations

from typing import NamedTuple

import jiwer
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES
from whisper.model import Whisper
from whisper.normalizers import EnglishTextNormalizer

from auralm.tokenizer.audio import SAMPLE_RATE, split_windows


class Transcript(NamedTuple):
    text: str
    language: str  # detected or given, e.g. "en"
    windows: int  # ≤ 30 s windows the clip was split into


def log_mel(audio: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Whisper's log-mel of one ≤ 30 s clip, zero-padded to 30 s.

    audio: (samples,) at 16 kHz, samples ≤ 480000. Returns (n_mels, 3000).
    Clips go one at a time: Whisper normalises each spectrogram by its own maximum.
    """
    if audio.shape[-1] > N_SAMPLES:
        raise ValueError(
            f"clip of {audio.shape[-1] / SAMPLE_RATE:.1f} s is longer than Whisper's 30 s; split_windows first"
        )
    return whisper.pad_or_trim(whisper.log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES), N_FRAMES)


def transcribe(model: Whisper, audio: torch.Tensor, language: str | None = None, batch_size: int = 8) -> Transcript:
    """Transcribe a 16 kHz clip of any length: split at quiet points, decode windows in batches (greedy).

    audio: (samples,). language: e.g. "en"; None detects it on multilingual models.
    """
    if not model.is_multilingual:
        language = "en"
    device = next(model.parameters()).device
    options = whisper.DecodingOptions(
        language=language, without_timestamps=True, fp16=next(model.parameters()).dtype == torch.float16
    )
    texts, languages = [], []
    windows = split_windows(audio)
    for first in range(0, len(windows), batch_size):
        mels = torch.stack(
            [log_mel(audio[w.start : w.end], model.dims.n_mels) for w in windows[first : first + batch_size]]
        )
        for result in whisper.decode(model, mels.to(device), options):
            texts.append(result.text.strip())
            languages.append(result.language)
    return Transcript(
        " ".join(t for t in texts if t), language or max(set(languages), key=languages.count), len(windows)
    )


def detect_language(model: Whisper, audio: torch.Tensor) -> dict[str, float]:
    """Language probabilities from the first 30 s of a 16 kHz clip, most likely first (multilingual models)."""
    if not model.is_multilingual:
        raise ValueError("an English-only Whisper model cannot detect languages; use a multilingual one such as 'base'")
    mel = log_mel(audio[:N_SAMPLES], model.dims.n_mels).to(next(model.parameters()).device)
    _, probs = model.detect_language(mel)
    return dict(sorted(probs.items(), key=lambda item: -item[1]))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """English word error rate after Whisper's normalisation (numbers, spelling, punctuation)."""
    normalise = EnglishTextNormalizer()
    return jiwer.wer(normalise(reference), normalise(hypothesis))
