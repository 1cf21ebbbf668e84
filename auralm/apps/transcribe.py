"""`auralm transcribe FILE|DIR ...`: audio → sound tokens → text through the speech tokenizer's Whisper decoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from auralm.apps.arguments import (
    add_language,
    add_tokenizer_arguments,
    audio_files,
    for_each_file,
    load_speech_tokenizer,
    resolve_language,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transcribe", help="audio → sound tokens → text through the tokenizer's Whisper decoder"
    )
    add_tokenizer_arguments(parser)
    add_language(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.tokenizer import load_audio

    files = audio_files(args.inputs)
    tokenizer = load_speech_tokenizer(args)
    language = resolve_language(tokenizer.whisper, args.language)

    def transcribe_files(paths: list[Path]) -> list[str]:
        codes = tokenizer.encode([load_audio(path) for path in paths], batch_size=args.batch_size)
        texts = tokenizer.decode_text(codes, language=language, batch_size=args.batch_size)
        return [f"{path}: {text}" for path, text in zip(paths, texts, strict=True)]

    return for_each_file(files, transcribe_files, "transcribe", args.batch_size, progress=args.progress)
