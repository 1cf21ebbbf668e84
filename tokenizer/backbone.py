"""The frozen Whisper backbone at work: log-mel features, batched transcription, language detection.

These are the references a speech tokenizer is judged against: its tokens decoded
to text should read like what Whisper itself transcribes from the audio.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jiwer
import torch
import torch.nn.functional as F
import whisper
from whisper.audio import N_FFT, N_FRAMES, N_SAMPLES
from whisper.model import Whisper
from whisper.normalizers import EnglishTextNormalizer
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE, get_tokenizer

from auralm.errors import AuralmError
from auralm.kernels import dot_product_attention
from auralm.tokenizer.audio import SAMPLE_RATE, split_windows
from auralm.tokenizer.config import WHISPER_SECONDS

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# openai-whisper's thresholds for decoding again: text whose gzip ratio is over this has looped, a mean
# log-probability under this is a guess.
LOOPED_COMPRESSION_RATIO = 2.4
GUESSED_LOGPROB = -1.0
# A decoded window may hold at most this much text, so a model that loops (or an untrained tokenizer's
# noise) stops early instead of filling Whisper's whole 224-token budget at every fallback temperature.
# Fast speech is about 4 words (≈ 6 tokens) a second.
TEXT_TOKENS_PER_SECOND = 10
MIN_TEXT_TOKENS = 16
# Ichigo and WhisperSpeech pad a clip's mel (not its audio) to 30 s with this value;
# their quantizers were trained on encoder output of such padding.
TOKENIZER_MEL_PAD = -1.5


class Transcript(NamedTuple):
    text: str
    language: str  # detected or given, e.g. "en"
    windows: int  # ≤ 30 s windows the clip was split into


def use_flash_attention(model: Whisper) -> Whisper:
    """Route every attention of a Whisper model through `auralm.kernels.dot_product_attention` (the Triton
    kernel on CUDA, torch SDPA elsewhere). Weights and outputs are unchanged; returns the model."""
    for module in model.modules():
        if isinstance(module, whisper.model.MultiHeadAttention):
            module.qkv_attention = functools.partial(_qkv_attention, module)
    return model


def _qkv_attention(module: whisper.model.MultiHeadAttention, q, k, v, mask=None) -> tuple[torch.Tensor, None]:
    """openai-whisper's qkv_attention contract: q (B, Tq, d), k, v (B, Tk, d) → ((B, Tq, d), no weights).
    Its decoder passes a mask for causal self-attention; a single query (KV-cache step) sees all keys."""
    q, k, v = (t.unflatten(-1, (module.n_head, -1)).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
    out = dot_product_attention(q, k, v, causal=mask is not None and q.shape[2] > 1)
    return out.transpose(1, 2).flatten(2), None


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


def log_mel_for_tokens(audio: torch.Tensor, n_mels: int, window_seconds: int = 30) -> torch.Tensor:
    """The log-mel a speech tokenizer sees: the clip's own (n // 160 frames), then mel padding to the window.

    audio: (samples,) at 16 kHz, at most window_seconds long. Returns (n_mels, 100 · window_seconds).
    """
    if audio.shape[-1] > window_seconds * SAMPLE_RATE:
        raise ValueError(
            f"clip of {audio.shape[-1] / SAMPLE_RATE:.1f} s is longer than the {window_seconds} s window; "
            "split_windows first"
        )
    if audio.shape[-1] < N_FFT:  # the STFT's reflect padding needs more than half a frame
        audio = F.pad(audio, (0, N_FFT - audio.shape[-1]))
    mel = whisper.log_mel_spectrogram(audio, n_mels)
    return F.pad(mel, (0, window_seconds * N_FRAMES // WHISPER_SECONDS - mel.shape[-1]), value=TOKENIZER_MEL_PAD)


def encode_mels(model: Whisper, mels: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder over windows of any length up to 30 s: mels (B, n_mels, 2T) → frames (B, T, d),
    T ≤ 1500, with the positional embedding cut to the T frames (openai-whisper's forward insists on 30 s)."""
    encoder = model.encoder
    x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mels)))).permute(0, 2, 1)  # (B, T, d)
    if x.shape[1] > encoder.positional_embedding.shape[0]:
        raise ValueError(f"{x.shape[1]} encoder frames exceed Whisper's {encoder.positional_embedding.shape[0]}")
    x = (x + encoder.positional_embedding[: x.shape[1]]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)


def transcribe(
    model: Whisper,
    audio: torch.Tensor,
    language: str | None = None,
    batch_size: int = 8,
    temperatures: Sequence[float] = FALLBACK_TEMPERATURES,
    prompt: str | None = None,
) -> Transcript:
    """Transcribe a 16 kHz clip of any length: split at quiet points, decode windows in batches.

    Greedy first; a window whose text repeats itself or scores too low is decoded again at
    rising temperatures, as openai-whisper's `transcribe` does ((0.0,): greedy only, deterministic).
    audio: (samples,). language: e.g. "en"; None detects it on multilingual models. prompt: earlier text as
    context for every window (OpenAI's `prompt`).
    """
    language = resolve_language(model, language)
    parameter = next(model.parameters())
    windows = split_windows(audio)
    results: list[whisper.DecodingResult] = []
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        mels = torch.stack([log_mel(audio[w.start : w.end], model.dims.n_mels) for w in batch])
        seconds = max(w.end - w.start for w in batch) / SAMPLE_RATE
        mels = mels.to(parameter.device, parameter.dtype)
        results += decode_with_fallback(model, mels, language, prompt, temperatures, seconds)
    languages = [r.language for r in results]
    text = " ".join(r.text.strip() for r in results if r.text.strip())
    return Transcript(text, language or max(set(languages), key=languages.count), len(windows))


def language_code(text: str) -> str:
    """A language Whisper knows, as a code ("de") or an English name ("German"); returns the code."""
    key = text.strip().lower()
    code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
    if code is None:
        raise AuralmError(f"unknown language {text!r}; use a code such as 'de' or a name such as 'german'")
    return code


def resolve_language(model: Whisper, language: str | None) -> str | None:
    """The language code to decode in: a code or name ("de", "german") → "de"; None → detect on
    multilingual models, "en" on English-only ones. Raises AuralmError for an unknown language, or for
    another language on an English-only model (it would only invent English)."""
    language = None if language is None else language_code(language)
    if model.is_multilingual:
        return language
    if language not in (None, "en"):
        raise AuralmError(
            f"this Whisper model is English-only and cannot transcribe {LANGUAGES[language].title()} ({language!r}); "
            "use a multilingual one such as 'base'"
        )
    return "en"


def text_token_budget(model: Whisper, seconds: float) -> int:
    """The most text tokens worth decoding from `seconds` of speech (Whisper's own cap: half its context)."""
    return min(model.dims.n_text_ctx // 2, MIN_TEXT_TOKENS + math.ceil(seconds * TEXT_TOKENS_PER_SECOND))


def decode_with_fallback(
    model: Whisper,
    inputs: torch.Tensor,
    language: str | None,
    prompt: str | None = None,
    temperatures: Sequence[float] = FALLBACK_TEMPERATURES,
    seconds: float = N_SAMPLES / SAMPLE_RATE,
) -> list[whisper.DecodingResult]:
    """Batched Whisper decoding, greedy first, sampling again where greedy looped or scored low.

    inputs: mels (B, n_mels, 3000) or encoder-shaped features (B, T ≤ 1500, d), in the model's dtype.
    language: as `resolve_language` gives it. temperatures: the schedule; (0.0,) decodes greedily only,
    which is deterministic. seconds: the longest input's speech, which bounds the text decoded.
    openai-whisper's thresholds: a gzip ratio over 2.4 means a loop, a mean log-prob under −1 a guess.
    Texts hold words only: special tokens a confused model emits (<|notimestamps|>, …) are dropped.
    """
    fp16 = inputs.dtype == torch.float16
    sample_len = text_token_budget(model, seconds)
    results: list[whisper.DecodingResult | None] = [None] * len(inputs)
    pending = list(range(len(inputs)))
    for temperature in temperatures:
        options = whisper.DecodingOptions(
            language=language,
            prompt=prompt,
            without_timestamps=True,
            fp16=fp16,
            temperature=temperature,
            sample_len=sample_len,
        )
        if temperature == 0:
            decoded = _decode(model, inputs[pending], options)
        else:  # best of 5 samples; openai-whisper samples batches of one only (its cross-attention cannot broadcast)
            sampled = dataclasses.replace(options, best_of=5)
            decoded = [_decode(model, inputs[i : i + 1], sampled)[0] for i in pending]
        for index, result in zip(pending, decoded, strict=True):
            results[index] = result
        pending = [
            i for i in pending
            if results[i].compression_ratio > LOOPED_COMPRESSION_RATIO or results[i].avg_logprob < GUESSED_LOGPROB
        ]  # fmt: skip
        if not pending:
            break
    return [_without_special_tokens(model, result) for result in results]


class _FeaturesTask(whisper.decoding.DecodingTask):
    """openai-whisper's decoding on features of any length: it takes a (B, T, d) input for audio
    features only when T is 1500, and runs the encoder on anything else."""

    def _get_audio_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.half() if self.options.fp16 else features


def _decode(model: Whisper, inputs: torch.Tensor, options: whisper.DecodingOptions) -> list[whisper.DecodingResult]:
    """Mels (B, n_mels, 3000) through the encoder, or encoder-shaped features (B, T, d) straight to the decoder."""
    if inputs.shape[1:] == (model.dims.n_mels, N_FRAMES):
        return whisper.decode(model, inputs, options)
    return _FeaturesTask(model, options).run(inputs)


def _without_special_tokens(model: Whisper, result: whisper.DecodingResult) -> whisper.DecodingResult:
    """openai-whisper's text keeps every token below the timestamps, <|notimestamps|> and the other
    special tokens (all numbered from end-of-text up) included; keep words only."""
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    words = [t for t in result.tokens if t < tokenizer.eot]
    if len(words) == len(result.tokens):
        return result
    return dataclasses.replace(result, text=tokenizer.decode(words))


def detect_language(model: Whisper, audio: torch.Tensor) -> dict[str, float]:
    """Language probabilities from the first 30 s of a 16 kHz clip, most likely first (multilingual models)."""
    if not model.is_multilingual:
        raise ValueError("an English-only Whisper model cannot detect languages; use a multilingual one such as 'base'")
    mel = log_mel(audio[:N_SAMPLES], model.dims.n_mels).to(next(model.parameters()).device)
    _, probs = model.detect_language(mel)
    return dict(sorted(probs.items(), key=lambda item: -item[1]))


@functools.cache
def _english_normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize_text(text: str) -> str:
    """English text as Whisper's normaliser makes it for scoring: lower case, no punctuation, numbers as
    digits, British spellings American ("Twelve colours." → "12 colors")."""
    return _english_normalizer()(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """English word error rate after Whisper's normalisation (numbers, spelling, punctuation)."""
    return jiwer.wer(normalize_text(reference), normalize_text(hypothesis))


def corpus_word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """The word error rate of many clips at once, after Whisper's normalisation: all errors over all reference
    words (a long clip weighs more than a short one; not the mean of per-clip rates)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return jiwer.wer([normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses])
