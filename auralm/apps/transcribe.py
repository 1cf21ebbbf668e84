"""`auralm transcribe FILE|DIR ...`: audio → sound tokens → text through the speech tokenizer's Whisper decoder.
A silent file (auralm.tokenizer.audio.is_silent) is an empty transcript, read by no model."""

from __future__ import annotations

import argparse
from pathlib import Path

from auralm.apps.arguments import (
    add_language,
    add_max_audio_seconds,
    add_tokenizer_arguments,
    audio_files,
    for_each_file,
    load_speech_tokenizer,
    max_audio_seconds,
    resolve_language,
    usable_audio_files,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transcribe", help="audio → sound tokens → text through the tokenizer's Whisper decoder"
    )
    add_tokenizer_arguments(parser)
    add_language(parser)
    add_max_audio_seconds(parser, "longest file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.tokenizer import load_audio
    from auralm.tokenizer.audio import is_silent

    limit = max_audio_seconds(args)
    files = usable_audio_files(audio_files(args.inputs), limit)  # before the slow part: no model for a typo
    if not files.paths:
        return for_each_file(files, list, "transcribe")
    tokenizer = load_speech_tokenizer(args)
    language = resolve_language(tokenizer.whisper, args.language)

    def transcribe_files(paths: list[Path]) -> list[str]:
        clips = [load_audio(path, max_seconds=limit) for path in paths]
        heard = [i for i, clip in enumerate(clips) if not is_silent(clip)]
        texts = [""] * len(clips)
        if heard:
            codes = tokenizer.encode([clips[i] for i in heard], batch_size=args.batch_size)
            decoded = tokenizer.decode_text(codes, language=language, batch_size=args.batch_size)
            for i, text in zip(heard, decoded, strict=True):
                texts[i] = text
        return [f"{path}: {text}" for path, text in zip(paths, texts, strict=True)]

    return for_each_file(files, transcribe_files, "transcribe", args.batch_size, progress=args.progress)
