"""Ending and streaming a generation: each row's own limits, cancelling, and the text of each new token as it comes
(SpeechChat.stream)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, TextIteratorStreamer


class RowLimits(StoppingCriteria):
    """Ends each row of a batch on its own: at its max_new_tokens, or once its reply so far contains one of its stop
    strings (any tokenizer, any split). `ended[row]` is how many new tokens the row had when it ended here."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_length: int,
        max_new_tokens: Sequence[int],
        stops: Sequence[Sequence[str]],
    ):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.max_new_tokens, self.stops = list(max_new_tokens), [list(stop) for stop in stops]
        self.ended: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        new = input_ids.shape[1] - self.prompt_length
        done = [new >= most for most in self.max_new_tokens]
        for row, stop in enumerate(self.stops):
            if stop and not done[row]:
                reply = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
                done[row] = any(s in reply for s in stop)
        for row in (row for row, end in enumerate(done) if end):
            self.ended.setdefault(row, new)
        return torch.tensor(done, device=input_ids.device)


class Cancelled(StoppingCriteria):
    """Ends every sequence once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def cut(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string."""
    ends = [i for s in stop if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


class TokenStreamer(TextIteratorStreamer):
    """Each new token's text as soon as it decodes to whole characters. transformers' own streamer holds
    text back to the last space, so a first word (or a reply with no spaces) arrives late."""

    def put(self, value: torch.Tensor) -> None:
        """value: the prompt (1, T) first (skipped), then each new token (1,)."""
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if len(text) > self.print_len and not text.endswith("\ufffd"):  # U+FFFD: a character not yet whole
            self.on_finalized_text(text[self.print_len :])
            self.print_len = len(text)


def until_stop(pieces: Iterator[str], stop: Sequence[str]) -> Iterator[str]:
    """Pass pieces on, holding back a tail that could begin a stop string, and end before one."""
    hold = max((len(s) for s in stop), default=1) - 1
    text, sent = "", 0
    for piece in pieces:
        text += piece
        before = cut(text, stop)
        if len(before) < len(text):  # a stop string appeared: send up to it, swallow the rest
            if len(before) > sent:
                yield before[sent:]
            for _ in pieces:  # let generation finish (it stops on the same string)
                pass
            return
        if len(text) - hold > sent:
            yield text[sent : len(text) - hold]
            sent = len(text) - hold
    if len(text) > sent:
        yield text[sent:]
