"""`auralm demo`: the shipped speech models hear a spoken question and answer it, offline, with real weights.

The shipped question is tokenized into sound tokens, the text Whisper's decoder reads from those tokens is
scored against what was said, and the shipped speech LLM answers the question from the tokens alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SAMPLES = Path(__file__).parents[1] / "samples"
QUESTION = SAMPLES / "question_en.flac"
SHOWN_TOKENS = 8  # of the token string, before "…"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the embedded default offline on the shipped speech sample")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # torch and transformers: not before the command runs
    from auralm.lm import SpeechChat
    from auralm.quality_report import is_correct
    from auralm.tokenizer import SAMPLE_RATE, load_audio, word_error_rate
    from auralm.tokenizer.token_format import SOUND_END

    said = json.loads((SAMPLES / "texts.json").read_text())[QUESTION.name]
    expected = json.loads((SAMPLES / "answers.json").read_text())[QUESTION.name]
    print("auralm demo: the shipped speech models, offline, real weights\n")
    started = time.perf_counter()
    chat = SpeechChat.from_pretrained(device="cpu")  # the shipped models, as the README's figures were taken
    speech = chat.speech_tokenizer
    config = speech.config
    print(
        f"[1/4] load     speech tokenizer: Whisper {config.whisper} + {config.n_codes} codes, "
        f"{config.codes_per_second:g} tokens/s; LLM: SmolLM2-135M-Instruct + speech adapter "
        f"({time.perf_counter() - started:.1f} s)"
    )

    audio = load_audio(QUESTION)
    seconds = len(audio) / SAMPLE_RATE
    started = time.perf_counter()
    codes = speech.encode(audio)
    shown = speech.to_string(codes[:SHOWN_TOKENS]).removesuffix(SOUND_END) + "…" + SOUND_END
    print(f"[2/4] tokenize {QUESTION.name}, {seconds:.1f} s → {len(codes)} sound tokens in "
          f"{time.perf_counter() - started:.2f} s:\n               {shown}")  # fmt: skip

    heard = speech.decode_text([codes])[0]
    wer = word_error_rate(said, heard)
    print(f"[3/4] decode   the text Whisper's decoder reads from the tokens (WER {wer:.2f}):\n               {heard}")

    started = time.perf_counter()
    question = [{"role": "user", "content": [{"type": "audio", "path": QUESTION}]}]  # what chat/serve send
    answer = chat.generate(question, max_new_tokens=64).strip()  # the heard line first, then the answer
    right = is_correct(expected, answer)
    print(f"[4/4] answer   the speech LLM, from the sound tokens alone ({time.perf_counter() - started:.1f} s):\n"
          f"               {answer}   ({'right' if right else 'expected: ' + expected})")  # fmt: skip

    print(f'\ndone: said "{said}", answered "{answer}". Your turn:')
    print('  auralm chat --audio yourfile.wav --prompt "What is said here?"')
    return 0
