"""`auralm tokenize FILE|DIR ...`: sound tokens, one line per file; with --output a rerun resumes where it stopped."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auralm.apps.arguments import (
    UsageError,
    add_tokenizer_arguments,
    audio_files,
    for_each_file,
    load_speech_tokenizer,
    usable_audio_files,
)
from auralm.data.token_lines import FORMATS, format_line, resume


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenize", help="turn audio into sound tokens, one line per file")
    add_tokenizer_arguments(parser)
    parser.add_argument(
        "--format", choices=FORMATS, default="string", help="string (Ichigo's), ids or jsonl (default: string)"
    )
    parser.add_argument("--output", type=Path, help="write here instead of stdout; a rerun skips files already in it")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.tokenizer import SAMPLE_RATE, load_audio

    files = audio_files(args.inputs)
    done = resume(args.output, args.format) if args.output else set()  # before the slow part: it may refuse
    todo = [path for path in files if str(path) not in done]
    if done:
        print(f"resuming: {len(files) - len(todo)} of {len(files)} files already in {args.output}", file=sys.stderr)
    todo = usable_audio_files(todo)  # checked from their headers, before the model loads
    if not todo.paths:
        return for_each_file(todo, list, "tokenize")
    tokenizer = load_speech_tokenizer(args)

    def tokenize_files(paths: list[Path]) -> list[str]:
        clips = [load_audio(path) for path in paths]
        codes = tokenizer.encode(clips, batch_size=args.batch_size)
        return [
            format_line(p, c, len(a) / SAMPLE_RATE, args.format) for p, c, a in zip(paths, codes, clips, strict=True)
        ]

    if args.output is None:
        return for_each_file(todo, tokenize_files, "tokenize", args.batch_size, progress=args.progress)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        output = args.output.open("a")
    except OSError as e:
        raise UsageError(f"--output {args.output}: {e.strerror}") from None
    with output:
        return for_each_file(todo, tokenize_files, "tokenize", args.batch_size, output, args.progress)
