"""`auralm export INPUT --out DIR`: a whole dataset's sound tokens as Parquet shards (or JSONL token strings),
resumable after any kill, torchrun for many GPUs (README: Exporting tokens)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auralm.apps.arguments import (
    UsageError,
    add_device,
    add_progress,
    add_speech_tokenizer,
    non_negative_int,
    positive_float,
    positive_int,
)
from auralm.devices import AUTO


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="tokenize a whole dataset into Parquet shards (or JSONL token strings); resumable, torchrun for many GPUs",
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="a folder of audio, a JSONL manifest (audio, optional text and id), "
        "a datasets save_to_disk folder or Parquet files with an Audio column",
    )
    parser.add_argument("--out", type=Path, required=True, help="the folder to write; run again to resume it")
    add_speech_tokenizer(parser)
    parser.add_argument(
        "--format",
        choices=("parquet", "jsonl"),
        default="parquet",
        help="parquet: codes as int16 lists (default); jsonl: Ichigo token strings, ready for LLM training",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows encoded together (default: 16)")
    parser.add_argument("--num-workers", type=non_negative_int, default=2, help="processes decoding audio (default: 2)")
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=1000,
        help="inputs per shard; a kill loses at most the shards in flight (default: 1000)",
    )
    add_device(parser, choices=(AUTO, "cpu", "cuda"), note="; under torchrun each process its GPU, LOCAL_RANK")
    parser.add_argument(
        "--max-seconds",
        type=positive_float,
        default=3600.0,
        help="longer inputs go to errors.jsonl undecoded (default: 3600)",
    )
    parser.add_argument(
        "--audio-column", default="audio", help="of a datasets folder or Parquet input (default: audio)"
    )
    parser.add_argument("--text-column", default="text", help="of a datasets folder or Parquet input (default: text)")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also do again the shards holding inputs that failed (errors.jsonl), e.g. once those files are mended",
    )
    add_progress(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.data.export_job import export_dataset
    from auralm.devices import default_device
    from auralm.distributed import init_distributed
    from auralm.tokenizer import SpeechTokenizer

    if not Path(args.input).exists():  # before the tokenizer loads: a typo costs no start-up
        raise UsageError(f"{args.input}: no such file or folder")
    # auto: the device type of auralm.devices' rule; init_distributed gives each torchrun process its own GPU
    world = init_distributed(default_device().type if args.device == AUTO else args.device)
    try:
        tokenizer = SpeechTokenizer.from_pretrained(args.checkpoint, whisper=args.whisper, device=world.device)
        summary = export_dataset(
            args.input,
            args.out,
            tokenizer,
            world=world,
            fmt=args.format,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            max_seconds=args.max_seconds,
            audio_column=args.audio_column,
            text_column=args.text_column,
            progress=args.progress or sys.stderr.isatty(),
            retry_failed=args.retry_failed,
        )
    finally:
        world.close()
    if world.is_main:
        print(summary, file=sys.stderr)
    return 1 if summary.failed else 0
