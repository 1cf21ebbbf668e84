"""Chat conversations for `auralm train sft` from a synthetic speech set's clip manifest (synthetic_speech.py).

Each clip row becomes the conversations a speech-instruct model learns from:
    every clip      → "Transcribe the speech." beside the clip → the transcript
    spoken question → the clip alone, or with ANSWER_PROMPT            → the answer
                    → the question as text (a text-only turn)           → the same answer
Transcribing the questions too teaches the words of the very sentences spoken QA needs, and that a
request to transcribe is not a question to answer.
Noise and silence → refusal conversations are the sft recipe's own (`noise_ratio`). Which prompt a spoken
question gets is drawn from its id, so the same rows always give the same manifest.
"""

from __future__ import annotations

import random
from typing import Any

from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT

ANSWER_PROMPT = "Answer the question in the recording."
WITH_PROMPT_SHARE = 0.5  # of spoken questions; the rest come as the clip alone


def clip_conversations(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversations (SFT manifest lines: id + messages) made from one clip manifest row."""
    audio = {"type": "audio", "path": row["audio"]}
    transcribe = _conversation(f"{row['id']}-transcribe", [audio, _text(TRANSCRIBE_PROMPT)], row["text"])
    if row["kind"] == "transcript":
        return [transcribe]
    with_prompt = random.Random(f"prompt:{row['id']}").random() < WITH_PROMPT_SHARE
    spoken = [audio, _text(ANSWER_PROMPT)] if with_prompt else [audio]
    return [
        transcribe,
        _conversation(f"{row['id']}-spoken", spoken, row["answer"]),
        _conversation(f"{row['id']}-text", [_text(row["text"])], row["answer"]),
    ]


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _conversation(id: str, user: list[dict[str, str]], reply: str) -> dict[str, Any]:
    return {"id": id, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}
