"""`auralm info FILE|DIR ...`: decode audio; show its duration, sound-token count and the speech tokenizer's windows
(the shipped one's, or --checkpoint's: read from its config alone, no model loads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from auralm.apps.arguments import AudioFiles, add_inputs, audio_files, for_each_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="decode audio files and show what auralm makes of them")
    add_inputs(parser)
    parser.add_argument(
        "--checkpoint",
        help="the speech tokenizer whose tokens and windows to count: an auralm folder, or an Ichigo .pth / "
        "WhisperSpeech .model file (default: the shipped one, also named 'default')",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.tokenizer import SAMPLE_RATE, load_audio
    from auralm.tokenizer.speech_tokenizer import clip_windows, read_config

    files = audio_files(args.inputs)
    config = read_config(args.checkpoint)  # its rate (25 sound tokens a second for Ichigo's) and window length

    def describe(paths: list[Path]) -> list[str]:
        (path,) = paths
        audio = load_audio(path)
        windows = clip_windows(audio, config)
        return [
            f"{path}: {len(audio) / SAMPLE_RATE:.2f} s → {len(audio)} samples at 16 kHz mono, "
            f"{config.num_codes(len(audio))} sound tokens, {len(windows)} window{'s' * (len(windows) != 1)} "
            f"of ≤ {config.window_seconds} s "
            f"({', '.join(f'{w.start / SAMPLE_RATE:.1f}–{w.end / SAMPLE_RATE:.1f} s' for w in windows)})"
        ]

    return for_each_file(AudioFiles(files, 0, len(files)), describe, "info", progress=args.progress)
