"""What the `auralm` commands share: argument types, the argument groups (inputs, tokenizer, models, device),
the models those arguments name, and running a command over audio files.

Argument types raise argparse.ArgumentTypeError, which argparse reports as "argument --flag: message". Nothing
here imports torch before a command runs, so `auralm --help` answers at once. Files and paths are checked before
any model loads (`usable_audio_files`, `check_model_paths`), so a typo costs no start-up.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

from tqdm import tqdm

from auralm.devices import AUTO, RULE
from auralm.errors import AuralmError

if TYPE_CHECKING:
    from whisper.model import Whisper

    from auralm.lm import SpeechChat
    from auralm.tokenizer import SpeechTokenizer


class UsageError(Exception):
    """Arguments that name nothing usable; reported in one line with exit code 2."""


# ---- argument types -----------------------------------------------------------------------------------


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
    """auto (auralm.devices' rule), or a torch device this machine has: cpu, cuda, cuda:N or mps."""
    if text == AUTO:
        return text
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N") from None
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
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported; use auto, cpu, cuda or cuda:N")
    return text


# ---- argument groups ----------------------------------------------------------------------------------


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )


def add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="audio files, or folders to search for them")
    add_progress(parser)


def add_language(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--language",
        type=language_code,
        help="a code such as 'de' or a name such as 'german'; detected when omitted (multilingual Whisper only)",
    )


def add_max_audio_seconds(parser: argparse.ArgumentParser, what: str = "longest clip") -> None:
    """--max-audio-seconds; unset, `max_audio_seconds` gives the one limit of auralm.tokenizer.audio (the servers')."""
    parser.add_argument(
        "--max-audio-seconds",
        type=positive_float,
        help=f"{what}, in seconds; longer audio is refused (default: 300, as the servers)",
    )


def max_audio_seconds(args: argparse.Namespace) -> float:
    from auralm.tokenizer.audio import MAX_AUDIO_SECONDS

    return getattr(args, "max_audio_seconds", None) or MAX_AUDIO_SECONDS


def add_device(parser: argparse.ArgumentParser, choices: tuple[str, ...] | None = None, note: str = "") -> None:
    """--device, default auto: the one rule of auralm.devices, stated in the help. choices: to narrow the devices
    a command takes (all of `device` by default); note: what else the command does with it."""
    names = ", ".join(choices) if choices else "auto, cpu, cuda, cuda:N or mps"
    parser.add_argument(
        "--device",
        type=device,
        choices=choices,
        default=AUTO,
        help=f"torch device: {names} (default: {AUTO} = {RULE}{note})",
    )


def add_speech_tokenizer(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and --whisper: the speech tokenizer. No --checkpoint and `--checkpoint default` are one
    thing, the shipped tokenizer (auralm.checkpoints.registry.names_shipped_tokenizer)."""
    parser.add_argument(
        "--checkpoint",
        help="speech tokenizer: an auralm folder, or an Ichigo .pth / WhisperSpeech .model file "
        "(default: the shipped one, also named 'default')",
    )
    parser.add_argument(
        "--whisper", help="Whisper backbone (name, .pt or CTranslate2 folder); default: the checkpoint's"
    )


def add_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    """Audio inputs and the speech tokenizer that encodes them (`auralm tokenize`, `auralm transcribe`)."""
    add_inputs(parser)
    add_speech_tokenizer(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="30 s windows encoded together (default: 16 on a GPU, 1 on CPU, where batches gain nothing)",
    )
    add_device(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The LLM and speech tokenizer a chat runs on (chat, serve, demo-web, eval, benchmarks/quality.py);
    `load_speech_chat` loads them."""
    parser.add_argument(
        "--llm",
        help="Hugging Face folder or .gguf file; smollm2 = the packaged SmolLM2-135M-Instruct, plain "
        "(default, with no model flag at all: the shipped speech model, SmolLM2 + its speech adapter)",
    )
    parser.add_argument("--adapter", help="a speech adapter folder (LoRA or widened) to apply to the LLM")
    add_speech_tokenizer(parser)
    add_device(parser)
    parser.add_argument(
        "--allow-mismatch", action="store_true", help="pair an LLM with a speech tokenizer it was not trained on"
    )


# ---- the models the arguments name --------------------------------------------------------------------


def check_model_paths(args: argparse.Namespace) -> None:
    """The LLM and adapter folders or files --llm and --adapter name exist, so a typo fails before the speech
    tokenizer loads (which checks its own --checkpoint and --whisper first thing)."""
    from auralm.lm.loading import DEFAULT_LLM

    for flag, value in (("--llm", args.llm), ("--adapter", args.adapter)):
        if value is not None and value != DEFAULT_LLM and not Path(value).exists():
            raise UsageError(f"{flag} {value}: no such file or folder")


def load_speech_chat(args: argparse.Namespace) -> SpeechChat:
    """The chat `add_model_arguments` names, built by SpeechChat.from_pretrained (the one way every front end
    builds one); its warnings (an LLM without sound tokens) go to stderr. Its clips may be as long as
    --max-audio-seconds, where the command has it."""
    check_model_paths(args)
    from auralm.lm import SpeechChat

    return SpeechChat.from_pretrained(
        args.llm, args.checkpoint, adapter=args.adapter, whisper=args.whisper, device=args.device,
        allow_mismatch=args.allow_mismatch, max_audio_seconds=max_audio_seconds(args),
    )  # fmt: skip


def load_speech_tokenizer(args: argparse.Namespace) -> SpeechTokenizer:
    """The speech tokenizer `add_tokenizer_arguments` names; an unset --batch-size becomes 16 on a GPU, else 1."""
    from auralm.devices import resolve_device
    from auralm.tokenizer import SpeechTokenizer

    tokenizer = SpeechTokenizer.from_pretrained(
        args.checkpoint, whisper=args.whisper, device=resolve_device(args.device)
    )
    if args.batch_size is None:
        args.batch_size = 16 if tokenizer.device.type == "cuda" else 1
    return tokenizer


def resolve_language(whisper: Whisper, language: str | None) -> str | None:
    """--language checked against the model before any file is read: English-only models take only English."""
    from auralm.tokenizer.backbone import resolve_language as whisper_resolve_language

    try:
        return whisper_resolve_language(whisper, language)
    except AuralmError as e:
        raise UsageError(f"--language {language}: {e}") from None


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


class AudioFiles(NamedTuple):
    """A command's audio files: those whose headers pass (`probe_audio`), and how many of all did not."""

    paths: list[Path]
    failed: int  # each reported already, as `for_each_file` reports a file that fails
    total: int


def usable_audio_files(files: list[Path], max_seconds: float | None = None) -> AudioFiles:
    """`files` checked from their headers before any model loads: an unreadable or too long file is reported
    ("FAILED …" on stderr) and left out. max_seconds: None is load_audio's own limit."""
    from auralm.tokenizer.audio import DEFAULT_MAX_SECONDS, AudioError, probe_audio

    usable = []
    for path in files:
        try:
            probe_audio(path, max_seconds or DEFAULT_MAX_SECONDS)
        except AudioError as e:
            print(f"FAILED {e}", file=sys.stderr)
            continue
        usable.append(path)
    return AudioFiles(usable, len(files) - len(usable), len(files))


def for_each_file(
    files: AudioFiles,
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
    Returns the exit code: 0 if all succeeded (those `usable_audio_files` left out count), else 1.
    """
    from auralm.tokenizer import AudioError

    failed = files.failed
    started = time.perf_counter()
    show = (progress or sys.stderr.isatty()) and len(files.paths) > 1
    with tqdm(total=len(files.paths), desc=desc, unit="file", disable=not show, file=sys.stderr) as bar:
        for first in range(0, len(files.paths), batch_size):
            batch = files.paths[first : first + batch_size]
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
    if files.total > 1:
        print(
            f"{files.total - failed} of {files.total} files done in {time.perf_counter() - started:.1f} s"
            + (f"; {failed} failed (see above)" if failed else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0
