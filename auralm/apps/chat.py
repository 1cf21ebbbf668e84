"""`auralm chat`: one question (--prompt) or an interactive session, answers streamed as they come.

In the session, a line is a message to the model; commands start with a slash:
    /audio FILE   attach a clip to the next message     /reset   forget the conversation
    /exit         leave (so does end of input)
Ctrl-C during a reply stops that reply and returns to the prompt; at the prompt it ends the session.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from auralm.apps.arguments import add_model_arguments, load_speech_chat, non_negative_float, positive_int

if TYPE_CHECKING:
    from auralm.lm import SpeechChat
    from auralm.lm.chat import ReplyStream

HELP = "commands: /audio FILE (attach a clip to your next message), /reset, /exit"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat", help="talk with the LLM about audio: one --prompt, or an interactive session"
    )
    parser.add_argument("--prompt", help="ask this once and exit; without it, an interactive session starts")
    parser.add_argument("--audio", type=Path, help="a clip to go with --prompt (or with the first message)")
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, help="longest reply (default: 256)")
    parser.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="sampling temperature; 0 decodes greedily (default)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    chat = load_speech_chat(args)
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.prompt is not None:
        _, stopped = _print_stream(chat.stream([_message(args.prompt, args.audio)], **options), sys.stdout)
        return 130 if stopped else 0
    return session(chat, sys.stdin, sys.stdout, args.audio, **options)


def session(chat: SpeechChat, stdin: TextIO, stdout: TextIO, audio: Path | None = None, **options: Any) -> int:
    """Talk until /exit or end of input: lines from stdin, replies streamed to stdout, notes on stderr.

    audio: a clip for the first message. options: for `SpeechChat.stream` (max_new_tokens, temperature).
    A reply stopped by Ctrl-C stays in the conversation as far as it was printed.
    """
    from auralm.tokenizer import AudioError, load_audio

    print(HELP, file=sys.stderr)
    history: list[dict] = []
    for line in _lines(stdin):
        command, _, argument = line.partition(" ")
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history, audio = [], None
            chat.forget()
            print("(conversation forgotten)", file=sys.stderr)
        elif command == "/audio":
            if not argument.strip():
                print("usage: /audio FILE (a clip to attach to your next message)", file=sys.stderr)
                continue
            path = Path(argument.strip())
            try:
                load_audio(path)  # a bad file is reported now, not after the next message
            except AudioError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            audio = path
            print(f"(attached {path} to your next message)", file=sys.stderr)
        elif command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=sys.stderr)
        elif line:
            history.append(_message(line, audio))
            audio = None
            reply, _ = _print_stream(chat.stream(history, **options), stdout)
            history.append({"role": "assistant", "content": reply})
    return 0


def _message(text: str, audio: Path | None) -> dict:
    """Text first, then the clip: models read the question before the sound."""
    if audio is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "audio", "path": audio}]}


def _lines(stdin: TextIO) -> Iterator[str]:
    while True:
        if stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            return
        yield line.strip()


def _print_stream(pieces: ReplyStream, stdout: TextIO) -> tuple[str, bool]:
    """Print a reply as it is generated. Returns it and whether Ctrl-C stopped it: stopping closes the
    stream, which ends the generation, so the model is free at once."""
    reply = ""
    try:
        for piece in pieces:
            reply += piece
            print(piece, end="", file=stdout, flush=True)
    except KeyboardInterrupt:
        pieces.close()
        print(file=stdout, flush=True)
        print("(reply stopped)", file=sys.stderr)
        return reply, True
    print(file=stdout, flush=True)
    return reply, False
