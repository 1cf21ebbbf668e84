"""`auralm eval MANIFEST`: the quality report on held-out clips (auralm.evaluation): tokens → text, Whisper and
LLM word error rates, spoken-QA accuracy, noise refusals, text answers kept, codebook use, speed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from auralm.apps.arguments import UsageError, add_model_arguments, add_progress, load_speech_chat, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="the quality report: WERs, spoken-QA accuracy, refusals, text answers kept, on held-out clips"
    )
    parser.add_argument(
        "manifest",
        type=Path,
        help="a clip manifest, JSONL: audio (relative to the manifest), text, kind (transcript, or question with its "
        "answer), optional id and language; as `auralm data synth` writes test.jsonl",
    )
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N clips only (default: all)")
    parser.add_argument("--json", type=Path, help="also write the whole report, every reply included, to this file")
    parser.add_argument(
        "--base-llm", help="the LLM the speech LLM was made from, for the text answers (default: SmolLM2, packaged)"
    )
    parser.add_argument(
        "--noise-clips", type=positive_int, default=30, help="clips without speech that should be refused (default: 30)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also list wrong answers, noise not refused, text answers changed"
    )
    add_progress(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.evaluation import evaluate, read_clips
    from auralm.lm import DEFAULT_LLM
    from auralm.quality_report import format_report
    from auralm.tokenizer.audio import probe_audio

    clips = read_clips(args.manifest, args.limit)  # a bad manifest is reported before the models load,
    for clip in clips:  # and so is a clip that is not audio
        probe_audio(clip.audio)
    if args.base_llm not in (None, DEFAULT_LLM) and not Path(args.base_llm).exists():
        raise UsageError(f"--base-llm {args.base_llm}: no such file or folder")
    report = evaluate(
        load_speech_chat(args), clips, base_llm=args.base_llm or DEFAULT_LLM, noise_clips=args.noise_clips,
        progress=args.progress or sys.stderr.isatty(),
    )  # fmt: skip
    print(format_report(report, verbose=args.verbose))
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        except OSError as e:
            raise UsageError(f"--json {args.json}: {e.strerror}") from None
    return 0
