"""What the server's POST /v1/audio/transcriptions reads audio with, and how it answers (auralm.apps.server).

The form's `model` picks the reader, each of them listed by GET /v1/models:
    whisper-1      Whisper itself on the audio: the speech tokenizer's own backbone (`auralm whisper`), what
                   OpenAI clients send by default and expect
    auralm-tokens  the sound tokens read back by that Whisper's decoder (`auralm transcribe`): what the LLM is given
    the LLM's name the speech LLM transcribes the sound tokens (SpeechChat.transcribe)
Audio is cut into the speech tokenizer's windows, one segment each; a silent window (`is_silent`) is an empty
segment, read by no model. Answers come as json, text, verbose_json, srt or vtt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from fastapi.responses import PlainTextResponse

from auralm.lm.chat import SpeechChat
from auralm.tokenizer import SAMPLE_RATE, transcribe
from auralm.tokenizer.audio import is_silent
from auralm.tokenizer.backbone import resolve_language

WHISPER_MODEL = "whisper-1"  # OpenAI's name for Whisper, which its clients send by default
TOKENS_MODEL = "auralm-tokens"  # the sound tokens read back by the speech tokenizer's Whisper decoder
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def read_windows(
    chat: SpeechChat, reader: str, clips: Sequence[torch.Tensor], language: str | None, prompt: str | None,
    max_new_tokens: int,
) -> tuple[list[str], str | None]:  # fmt: skip
    """Each window's text as `reader` reads it (WHISPER_MODEL, TOKENS_MODEL, or else the LLM), "" for a silent one,
    and the language: given, detected by Whisper, or English for an English-only backbone (None when unknown).
    Raises AuralmError for a language the backbone does not know, before any model runs."""
    speech = chat.speech_tokenizer
    language = resolve_language(speech.whisper, language)
    heard = [i for i, clip in enumerate(clips) if not is_silent(clip)]
    texts, detected = [""] * len(clips), []
    if reader == WHISPER_MODEL:
        for i in heard:
            result = transcribe(speech.whisper, clips[i], language=language, prompt=prompt)
            texts[i] = result.text
            detected.append(result.language)
    elif reader == TOKENS_MODEL:
        codes = speech.encode([clips[i] for i in heard]) if heard else []
        for i, text in zip(heard, speech.decode_text(codes, language=language, prompt=prompt), strict=True):
            texts[i] = text
    else:
        for i in heard:
            part = {"type": "audio", "array": clips[i], "sampling_rate": SAMPLE_RATE}
            texts[i] = chat.transcribe(part, max_new_tokens=max_new_tokens)
    return texts, language or (max(set(detected), key=detected.count) if detected else None)


def transcription_response(
    response_format: str, texts: list[str], windows: Sequence[tuple[int, int]], seconds: float, language: str | None
) -> Any:
    """The answer in `response_format`; windows: (start, end) samples of each text's window."""
    text = " ".join(t for t in texts if t)
    segments = [
        {"id": i, "start": start / SAMPLE_RATE, "end": end / SAMPLE_RATE, "text": segment}
        for i, ((start, end), segment) in enumerate(zip(windows, texts, strict=True))
    ]
    if response_format == "json":
        return {"text": text}
    if response_format == "verbose_json":
        return {"task": "transcribe", "language": language, "duration": seconds, "text": text, "segments": segments}
    if response_format == "text":
        return PlainTextResponse(text + "\n")
    return PlainTextResponse(subtitles(segments, response_format))


def subtitles(segments: list[dict[str, Any]], kind: str) -> str:
    """SubRip (srt) or WebVTT (vtt) cues, one per segment."""
    separator = "," if kind == "srt" else "."
    cues = [f"{timestamp(s['start'], separator)} --> {timestamp(s['end'], separator)}\n{s['text']}\n" for s in segments]
    if kind == "srt":
        return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
    return "WEBVTT\n\n" + "\n".join(cues)


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SubRip) or HH:MM:SS.mmm (WebVTT)."""
    minutes, ms = divmod(round(seconds * 1000), 60_000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}{separator}{ms % 1000:03d}"
