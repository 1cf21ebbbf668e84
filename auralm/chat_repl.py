"""`auralm chat`: one question (--prompt) or an interactive session, answers streamed as they come.

In the session, a line is a message to the model; commands start with a slash:
    /audio FILE   attach a clip to the next message     /reset   forget the conversation
    /exit         leave (so does end of input)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from auralm.lm import SpeechChat, add_sound_tokens, load_llm
from auralm.tokenizer import AudioError, SpeechTokenizer, load_audio

HELP = "commands: /audio FILE (attach a clip to your next message), /reset, /exit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="ask this once and exit; without it, an interactive session starts")
    parser.add_argument("--audio", type=Path, help="a clip to go with --prompt (or with the first message)")
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The LLM and speech tokenizer a chat runs on (shared by `auralm chat` and `auralm serve`)."""
    parser.add_argument("--llm", help="Hugging Face folder or .gguf file (default: SmolLM2-135M-Instruct, packaged)")
    parser.add_argument("--adapter", help="a LoRA adapter folder to apply to the LLM")
    parser.add_argument(
        "--checkpoint", required=True, help="speech tokenizer: an auralm folder or Ichigo/WhisperSpeech file"
    )
    parser.add_argument("--whisper", help="Whisper backbone of the tokenizer (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--allow-mismatch", action="store_true", help="pair an LLM with a speech tokenizer it was not trained on"
    )


def run_chat(args: argparse.Namespace, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    chat = load_chat(args)
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.prompt is not None:
        _print_stream(chat.stream([_message(args.prompt, args.audio)], **options), stdout)
        return 0

    print(HELP, file=sys.stderr)
    history: list[dict] = []
    audio = args.audio
    for line in _lines(stdin):
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history, audio = [], None
            chat.forget()
            print("(conversation forgotten)", file=sys.stderr)
        elif line.startswith("/audio"):
            path = Path(line.removeprefix("/audio").strip())
            try:
                load_audio(path)  # a bad file is reported now, not after the next message
            except AudioError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            audio = path
            print(f"(attached {path} to your next message)", file=sys.stderr)
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
        elif line:
            history.append(_message(line, audio))
            audio = None
            reply = _print_stream(chat.stream(history, **options), stdout)
            history.append({"role": "assistant", "content": reply})
    return 0


def load_chat(args: argparse.Namespace) -> SpeechChat:
    speech = SpeechTokenizer.from_pretrained(args.checkpoint, whisper=args.whisper, device=args.device)
    model, tokenizer = load_llm(args.llm, device=args.device, adapter=args.adapter)
    if add_sound_tokens(model, tokenizer, speech):
        print(
            "note: this LLM had no sound tokens; they were added untrained, so it cannot understand audio yet",
            file=sys.stderr,
        )
    return SpeechChat(model, tokenizer, speech, allow_mismatch=args.allow_mismatch)


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


def _print_stream(pieces: Iterator[str], stdout: TextIO) -> str:
    reply = ""
    for piece in pieces:
        reply += piece
        print(piece, end="", file=stdout, flush=True)
    print(file=stdout, flush=True)
    return reply
