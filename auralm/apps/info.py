"""`auralm info FILE|DIR ...`: decode audio; show its duration, sound-token count (25 per second) and windows."""

from __future__ import annotations

import argparse
from pathlib import Path

from auralm.apps.arguments import add_inputs, audio_files, for_each_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="decode audio files and show what auralm makes of them")
    add_inputs(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.tokenizer import SAMPLE_RATE, TokenizerConfig, load_audio, split_windows

    config = TokenizerConfig()  # Ichigo's rate: 25 sound tokens per second

    def describe(paths: list[Path]) -> list[str]:
        (path,) = paths
        audio = load_audio(path)
        windows = split_windows(audio, step=config.samples_per_code)
        return [
            f"{path}: {len(audio) / SAMPLE_RATE:.2f} s → {len(audio)} samples at 16 kHz mono, "
            f"{config.num_codes(len(audio))} sound tokens, {len(windows)} window{'s' * (len(windows) != 1)} "
            f"({', '.join(f'{w.start / SAMPLE_RATE:.1f}–{w.end / SAMPLE_RATE:.1f} s' for w in windows)})"
        ]

    return for_each_file(audio_files(args.inputs), describe, "info", progress=args.progress)
