"""The `auralm` command: one subcommand per job (`auralm --help` lists them), each in its own module of
`auralm.apps` named after it (`auralm demo-web` → `auralm.apps.demo_web`), which gives its arguments
(`add_parser`) and runs it (`run`).

Exit codes: 0 done; 1 some inputs failed (each reported, the rest still done);
2 nothing was done: bad arguments, a missing path, weights that do not load.
Every error is one line on stderr. torch, transformers and Whisper load inside the
commands that use them, so `auralm --help` answers at once. Progress bars show on a terminal or with
--progress, the libraries' (transformers' "Loading weights") as auralm's own.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import NoReturn

import auralm
from auralm.apps.arguments import UsageError
from auralm.errors import AuralmError

# In the order `auralm --help` lists them.
COMMANDS = (
    "demo", "info", "whisper", "tokenize", "export", "transcribe", "chat", "serve", "demo-web", "eval", "data",
    "train", "ship", "merge", "models",
)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in one line like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # `auralm train sft --threads 2 lr=1e-4`: argparse fills a list positional once, before the option, and leaves
    # the KEY=VALUE words after it unmatched; they are the recipe's settings all the same.
    if args.command == "train" and all("=" in word and not word.startswith("-") for word in unknown):
        args.overrides += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not (getattr(args, "progress", False) or sys.stderr.isatty()):
        quiet_library_progress_bars()
    # peft asks every model it wraps a property transformers 5 deprecated: noise, not the user's to act on (the
    # training recipes wrap models too; SpeechChat's loading filters it where it builds one)
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
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


def quiet_library_progress_bars() -> None:
    """No progress bars from Hugging Face libraries (transformers' "Loading weights", the hub's) in this process:
    through the environment for those not imported yet, through their switches for those that are."""
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:  # set by the user (or by an earlier call)
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="auralm", description=auralm.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"auralm {auralm.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        importlib.import_module(f"auralm.apps.{command.replace('-', '_')}").add_parser(subparsers)
    return parser
