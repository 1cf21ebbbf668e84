"""Ichigo's sound-token string: `<|sound_start|>` + one `<|sound_NNNN|>` per code + `<|sound_end|>`.

Models trained on Ichigo's tokens read ours unchanged. Codes are zero-padded to 4
digits (wider only for codebooks past 10 000 codes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from auralm.errors import AuralmError

SOUND_START = "<|sound_start|>"
SOUND_END = "<|sound_end|>"
# The instruction speech LLMs learn transcription with: training data (auralm.data) and SpeechChat.transcribe share it.
TRANSCRIBE_PROMPT = "Transcribe the speech."
# The reply to a clip without speech: what the speech LLM is trained to say (auralm.data.noise's REFUSAL), and what
# SpeechChat answers a silent clip with without running the LLM.
NO_SPEECH_REPLY = "I couldn't hear any speech in that."
# A reply that first writes what the clip says, on a line of its own, then answers (SpeechGPT's chain of modality:
# the LLM reads the words as text before it answers them). sft's `heard_first` teaches it; SpeechChat strips the line.
HEARD_PREFIX = "Heard: "
_SOUND_TOKEN = re.compile(r"<\|sound_(\d{4,})\|>")


def heard_reply(transcript: str, reply: str) -> str:
    """`reply` led by the line saying what was heard."""
    return f"{HEARD_PREFIX}{transcript}\n{reply}"


def without_heard(text: str) -> str:
    """A reply without its leading heard lines (a model may repeat one; "" while they are all there is)."""
    while text.startswith(HEARD_PREFIX):
        _, newline, text = text.partition("\n")
        if not newline:
            return ""
    return text


class TokenFormatError(AuralmError):
    """A sound-token string that is malformed or holds codes the tokenizer does not have."""


def sound_token(code: int) -> str:
    return f"<|sound_{code:04d}|>"


def codes_to_string(codes: Sequence[int] | torch.Tensor) -> str:
    """codes: (T,) ints → `<|sound_start|><|sound_0012|>…<|sound_end|>`."""
    values = codes.tolist() if isinstance(codes, torch.Tensor) else list(codes)
    return SOUND_START + "".join(sound_token(int(code)) for code in values) + SOUND_END


def string_to_codes(text: str, vocab_size: int) -> torch.Tensor:
    """Parse one token string (surrounding white space allowed) into codes (T,) int64.

    Raises TokenFormatError naming the offending position for anything else: missing
    start/end markers, text between tokens, or a code outside 0 … vocab_size − 1.
    """
    body = text.strip()
    if not body.startswith(SOUND_START):
        raise TokenFormatError(f"sound tokens must start with {SOUND_START}, got {body[:30]!r}")
    if not body.endswith(SOUND_END):
        raise TokenFormatError(f"sound tokens must end with {SOUND_END}, got …{body[-30:]!r}")
    position, end = len(SOUND_START), len(body) - len(SOUND_END)
    codes = []
    while position < end:
        match = _SOUND_TOKEN.match(body, position, end)
        if match is None:
            raise TokenFormatError(
                f"expected <|sound_NNNN|> at character {position}, got {body[position : position + 30]!r}"
            )
        code = int(match[1])
        if code >= vocab_size:
            raise TokenFormatError(
                f"code {code} at character {position} is out of range: this tokenizer emits codes 0 … {vocab_size - 1}"
            )
        codes.append(code)
        position = match.end()
    return torch.tensor(codes, dtype=torch.long)
