"""`auralm whisper FILE|DIR ...`: transcribe with the plain Whisper backbone, the reference for sound tokens.
A silent file (auralm.tokenizer.audio.is_silent) is an empty transcript, read by no model."""

from __future__ import annotations

import argparse
from pathlib import Path

from auralm.apps.arguments import (
    add_device,
    add_inputs,
    add_language,
    add_max_audio_seconds,
    audio_files,
    for_each_file,
    max_audio_seconds,
    resolve_language,
    usable_audio_files,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "whisper", help="transcribe audio with the plain Whisper backbone (the reference for tokens)"
    )
    add_inputs(parser)
    parser.add_argument(
        "--model", default="tiny.en", help="Whisper name, .pt file or CTranslate2 folder (default: tiny.en)"
    )
    add_language(parser)
    add_device(parser)
    add_max_audio_seconds(parser, "longest file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.checkpoints import load_whisper
    from auralm.devices import resolve_device
    from auralm.tokenizer import load_audio, transcribe
    from auralm.tokenizer.audio import is_silent
    from auralm.tokenizer.backbone import use_flash_attention

    limit = max_audio_seconds(args)
    files = usable_audio_files(audio_files(args.inputs), limit)  # before the slow part: no model for a typo
    if not files.paths:
        return for_each_file(files, list, "whisper")
    model = use_flash_attention(load_whisper(args.model, device=resolve_device(args.device)))
    language = resolve_language(model, args.language)

    def transcribe_file(paths: list[Path]) -> list[str]:
        (path,) = paths
        audio = load_audio(path, max_seconds=limit)
        if is_silent(audio):
            return [f"{path} [{language or '?'}]: "]
        result = transcribe(model, audio, language=language)
        return [f"{path} [{result.language}]: {result.text}"]

    return for_each_file(files, transcribe_file, "whisper", progress=args.progress)
