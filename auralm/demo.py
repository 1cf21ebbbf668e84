"""`auralm demo`: the whole offline path on the shipped speech sample, with real weights.

Decode and resample the sample, cut a long version of it at quiet points, and
transcribe both with the packaged Whisper tiny.en, scored against the known text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from auralm.checkpoints import WHISPER_MODELS, load_whisper
from auralm.tokenizer import TokenizerConfig, load_audio, split_windows, transcribe, word_error_rate
from auralm.tokenizer.audio import SAMPLE_RATE

SAMPLES = Path(__file__).parent / "samples"
SAMPLE = SAMPLES / "speech_en.flac"
WHISPER = "tiny.en"
LONG_REPEATS = 4  # the sample ×4 ≈ 81 s: long enough to need three or four windows


def run_demo() -> int:
    reference = json.loads((SAMPLES / "texts.json").read_text())[SAMPLE.name]
    print("auralm demo: offline, real weights, CPU\n")

    audio = load_audio(SAMPLE)
    seconds = len(audio) / SAMPLE_RATE
    print(f"[1/4] audio    {SAMPLE.name}: {seconds:.1f} s → {len(audio)} samples, 16 kHz mono float32")
    geometry = TokenizerConfig()
    print(
        f"               {geometry.num_codes(len(audio))} sound tokens at {geometry.codes_per_second:g} per second "
        "once a tokenizer is trained"
    )

    started = time.perf_counter()
    model = load_whisper(WHISPER)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"[2/4] whisper  {WHISPER}: {WHISPER_MODELS[WHISPER].description}")
    print(
        f"               converted to openai-whisper ({params:.0f} M parameters) in {time.perf_counter() - started:.1f} s"
    )

    started = time.perf_counter()
    short = transcribe(model, audio)
    short_seconds = time.perf_counter() - started
    short_wer = word_error_rate(reference, short.text)
    print(
        f"[3/4] transcribe ({short_seconds:.1f} s, real-time factor {short_seconds / seconds:.2f}, WER {short_wer:.2f}):"
    )
    print(f"               {short.text}")

    long_audio = torch.cat([audio] * LONG_REPEATS)
    windows = split_windows(long_audio)
    cuts = ", ".join(f"{w.end / SAMPLE_RATE:.1f}" for w in windows[:-1])
    started = time.perf_counter()
    long = transcribe(model, long_audio)
    long_seconds = time.perf_counter() - started
    long_wer = word_error_rate(" ".join([reference] * LONG_REPEATS), long.text)
    print(f"[4/4] long audio: the sample ×{LONG_REPEATS} = {len(long_audio) / SAMPLE_RATE:.1f} s, cut at quiet points")
    print(f"               {cuts} s into {len(windows)} windows ≤ 30 s, transcribed as one batch")
    print(f"               {long_seconds:.1f} s, WER {long_wer:.2f}")

    print(
        f"\ndone: WER {short_wer:.2f} on {seconds:.0f} s and {long_wer:.2f} on {len(long_audio) / SAMPLE_RATE:.0f} s with Whisper {WHISPER}"
    )
    return 0
