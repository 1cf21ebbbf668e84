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

from auralm.lm import SpeechChat
from auralm.tokenizer import AudioError, load_audio

if TYPE_CHECKING:
    from auralm.lm.chat import ReplyStream

HELP = "commands: /audio FILE (attach a clip to your next message), /reset, /exit"


def run_chat(args: argparse.Namespace) -> int:
    chat = load_chat(args)
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


def load_chat(args: argparse.Namespace) -> SpeechChat:
    """The chat the model arguments name; its warnings (an LLM without sound tokens) go to stderr."""
    return SpeechChat.from_pretrained(
        args.llm, args.checkpoint, adapter=args.adapter, whisper=args.whisper, device=args.device,
        allow_mismatch=args.allow_mismatch,
    )  # fmt: skip


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
