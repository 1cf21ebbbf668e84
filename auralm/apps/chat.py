"""`auralm chat`: one question (--prompt), a clip (--audio: answered as it is, a complete request), or an
interactive session after it, answers streamed as they come.

In the session, a line is a message to the model; commands start with a slash:
    /audio FILE   attach a clip to the next message     /reset   forget the conversation
    /exit         leave (so does end of input)
Ctrl-C during a reply stops that reply and returns to the prompt; at the prompt it ends the session. A message the
model cannot take (a clip over the limit, a conversation beyond the LLM's context) is reported, and the session
goes on. A silent clip is answered that no speech was heard (SpeechChat).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from auralm.apps.arguments import (
    add_max_audio_seconds,
    add_model_arguments,
    load_speech_chat,
    max_audio_seconds,
    non_negative_float,
    positive_int,
)
from auralm.errors import AuralmError

if TYPE_CHECKING:
    from auralm.lm import SpeechChat
    from auralm.lm.replies import ReplyStream

HELP = "commands: /audio FILE (attach a clip to your next message), /reset, /exit"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat", help="talk with the LLM about audio: one --prompt, or an interactive session"
    )
    parser.add_argument("--prompt", help="ask this once and exit; without it, an interactive session starts")
    parser.add_argument(
        "--audio", type=Path, help="a clip to go with --prompt; alone, the clip is answered, then the session starts"
    )
    add_max_audio_seconds(parser)
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, help="longest reply (default: 256)")
    parser.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="sampling temperature; 0 decodes greedily (default)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.audio is not None:  # before the models load: a typo costs no start-up
        from auralm.tokenizer.audio import probe_audio

        probe_audio(args.audio, max_audio_seconds(args))
    chat = load_speech_chat(args)
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.prompt is not None:
        _, stopped = _print_stream(chat.stream([_message(args.prompt, args.audio)], **options), sys.stdout)
        return 130 if stopped else 0
    history: list[dict] = []
    if args.audio is not None:  # a clip alone is a whole request: answered, then the session goes on
        history.append(_message("", args.audio))
        reply, stopped = _print_stream(chat.stream(history, **options), sys.stdout)
        history.append({"role": "assistant", "content": reply})
        if stopped and not sys.stdin.isatty():
            return 130
    return session(chat, sys.stdin, sys.stdout, history=history, **options)


def session(
    chat: SpeechChat, stdin: TextIO, stdout: TextIO, audio: Path | None = None, history: list[dict] | None = None,
    **options: Any,
) -> int:  # fmt: skip
    """Talk until /exit or end of input: lines from stdin, replies streamed to stdout, notes on stderr (the
    commands' help only on a terminal).

    audio: a clip for the first message. history: the conversation so far. options: for `SpeechChat.stream`
    (max_new_tokens, temperature). A reply stopped by Ctrl-C stays in the conversation as far as it was printed;
    a message that fails (AuralmError) is reported and left out of it.
    """
    from auralm.tokenizer import AudioError, load_audio

    if stdin.isatty():
        print(HELP, file=sys.stderr)
    history = list(history or [])
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
            try:  # a bad file is reported now, not after the next message
                load_audio(path, max_seconds=chat.max_audio_seconds)
            except AudioError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            audio = path
            print(f"(attached {path} to your next message)", file=sys.stderr)
        elif command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=sys.stderr)
        elif line:
            message, audio = _message(line, audio), None
            try:
                pieces = chat.stream([*history, message], **options)
            except AuralmError as e:  # a clip over the limit or gone, a conversation beyond the context
                print(f"error: {e}", file=sys.stderr)
                continue
            except KeyboardInterrupt:
                print("(reply stopped)", file=sys.stderr)
                continue
            reply, _ = _print_stream(pieces, stdout)
            history += [message, {"role": "assistant", "content": reply}]
    return 0


def _message(text: str, audio: Path | None) -> dict:
    """Text first, then the clip: models read the question before the sound. No text: the clip alone."""
    if audio is None:
        return {"role": "user", "content": text}
    parts = [{"type": "text", "text": text}] if text else []
    return {"role": "user", "content": [*parts, {"type": "audio", "path": audio}]}


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
