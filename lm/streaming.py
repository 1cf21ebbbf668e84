"""Ending and streaming a generation: each row's own limits, cancelling, and the text of each new token as it comes
(SpeechChat.stream)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from auralm.tokenizer.token_format import HEARD_PREFIX, without_heard


class RowLimits(StoppingCriteria):
    """Ends each row of a batch on its own: at its max_new_tokens, once its reply so far contains one of its stop
    strings (any tokenizer, any split), or once its reader left (`cancelled`). `ended[row]` is how many new tokens
    the row had when it ended here."""

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
        self.cancelled: set[int] = set()  # rows whose reader left (a thread-safe set.add from the reader's thread)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        new = input_ids.shape[1] - self.prompt_length
        gone = self.ended.keys() | self.cancelled  # rows ended before, and rows whose reader left
        done = [row in gone or new >= most for row, most in enumerate(self.max_new_tokens)]
        for row, stop in enumerate(self.stops):
            if stop and not done[row]:
                reply = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
                reply = without_heard(reply)  # stop strings end the answer, not the line saying what was heard
                done[row] = any(s in reply for s in stop)
        for row in (row for row, end in enumerate(done) if end):
            self.ended.setdefault(row, new)
        return torch.tensor(done, device=input_ids.device)


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


class BatchStreamer(BaseStreamer):
    """The rows of one batched `generate`, each streamed on its own (`rows[row]`, a TokenStreamer to iterate): a
    row's new tokens go to it until the row ends, at its end-of-text token or at the length where `limits` ended it
    (transformers checks the limits before it streams a step's tokens); `ids[row]` are the row's new tokens. `end()`
    ends every row left."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, limits: RowLimits, eos: set[int]):
        n = len(limits.max_new_tokens)
        self.rows = [TokenStreamer(tokenizer, skip_special_tokens=True) for _ in range(n)]
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.limits, self.eos, self._open, self._prompt_seen = limits, eos, set(range(n)), False

    def put(self, value: torch.Tensor) -> None:
        """value: the prompts (B, P) first (skipped), then each step's new tokens (B,)."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if row not in self._open:
                continue
            self.ids[row].append(token)
            self.rows[row].put(torch.tensor([token]))
            if token in self.eos or len(self.ids[row]) >= self.limits.ended.get(row, len(self.ids[row]) + 1):
                self._end(row)

    def end(self) -> None:
        for row in sorted(self._open):
            self._end(row)

    def _end(self, row: int) -> None:
        self._open.discard(row)
        self.rows[row].end()


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


class HeardLine:
    """A reply's leading heard lines (`without_heard`) taken off as its pieces come: `feed` gives back what may go on
    now (nothing while the reply is inside one, or could still be beginning one), `end` what was held when the
    reply ended."""

    def __init__(self):
        self.held, self.open = "", True

    def feed(self, piece: str) -> str:
        if not self.open:
            return piece
        self.held += piece
        if HEARD_PREFIX.startswith(rest := without_heard(self.held)):  # "" inside a heard line
            return ""
        self.open = False
        return rest

    def end(self) -> str:
        return without_heard(self.held) if self.open else ""


def after_heard(pieces: Iterator[str]) -> Iterator[str]:
    """Pass pieces on without the reply's leading heard lines."""
    line = HeardLine()
    for piece in pieces:
        if text := line.feed(piece):
            yield text
    if text := line.end():
        yield text
