"""What a generation gives back: `Reply` (the text, why it ended, what it cost), `ReplyStream` (its pieces as they
come), and `row_replies`, which reads one per row out of a batch that `RowLimits` ended row by row."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from auralm.lm.streaming import RowLimits, cut
from auralm.tokenizer.token_format import NO_SPEECH_REPLY, without_heard


class Reply(NamedTuple):
    """One conversation's reply and what it cost."""

    text: str
    finish_reason: str  # "length": max_new_tokens ran out; "stop": the model ended it, or a stop string did
    prompt_tokens: int  # LLM tokens of the prompt, sound tokens included
    completion_tokens: int  # tokens generated, the end-of-text token included


UNHEARD = Reply(NO_SPEECH_REPLY, "stop", 0, 0)  # the reply to a turn without speech, at no token's cost


def row_replies(
    tokenizer: PreTrainedTokenizerBase,
    attention_mask: torch.Tensor,
    sequences: torch.Tensor,
    limits: RowLimits,
    eos: set[int],
) -> list[Reply]:
    """The Reply of each row of one `generate`. attention_mask: (B, P) of the left-padded prompts; sequences:
    (B, P + new) token ids, a row's tokens after its end being padding. A row ends at its first eos (kept) or where
    `limits` ended it."""
    replies = []
    for row, ids in enumerate(sequences[:, attention_mask.shape[1] :].tolist()):
        first_eos = next((i + 1 for i, token in enumerate(ids) if token in eos), len(ids))
        new = ids[: min(first_eos, limits.ended.get(row, len(ids)))]
        replies.append(row_reply(tokenizer, int(attention_mask[row].sum()), new, limits, row, eos))
    return replies


def row_reply(
    tokenizer: PreTrainedTokenizerBase, prompt_tokens: int, new: list[int], limits: RowLimits, row: int, eos: set[int]
) -> Reply:
    """The Reply of one row, given its new tokens up to its end: the answer, without a line saying what was heard."""
    text, stop = without_heard(tokenizer.decode(new, skip_special_tokens=True)), limits.stops[row]
    ran_out = len(new) >= limits.max_new_tokens[row] > 0 and new[-1] not in eos and cut(text, stop) == text
    return Reply(cut(text, stop), "length" if ran_out else "stop", prompt_tokens, len(new))


def joined(replies: Sequence[Reply]) -> Reply:
    """Replies to a long clip's windows as one (one reply as it is): texts in order, the last one's ending, the
    tokens summed."""
    return Reply(
        " ".join(reply.text for reply in replies),
        replies[-1].finish_reason,
        sum(reply.prompt_tokens for reply in replies),
        sum(reply.completion_tokens for reply in replies),
    )


class ReplyStream(Iterator[str]):
    """The pieces of one streamed reply. Once all are read, `reply` holds the whole `Reply`;
    `close()`, read or not, ends the generation early (`on_close`)."""

    def __init__(self, pieces: Generator[str, None, Reply], on_close: Callable[[], None] | None = None):
        self._pieces, self._on_close = pieces, on_close
        self.reply: Reply | None = None

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as end:
            self.reply = end.value or self.reply  # an exhausted generator stops again with None
            raise

    def close(self) -> None:
        self._pieces.close()
        if self._on_close is not None:
            self._on_close()

    def joining(self, worker: threading.Thread) -> ReplyStream:
        """This stream, its generation running in `worker`: once it is read or closed, the worker has ended too."""
        return ReplyStream(_then_joined(self, worker))

    @classmethod
    def known(cls, reply: Reply) -> ReplyStream:
        """A reply known without generating here (`UNHEARD` to silence, an upstream's answers to a long clip's
        windows): all of it in one piece."""
        return cls(_said(reply))


class StreamBatch(NamedTuple):
    """Streams generated together (`SpeechChat.streams`): `run()` generates them all, in a thread of the caller's
    choosing (the streams' pieces come as it runs), and returns once every row has ended."""

    streams: list[ReplyStream]
    run: Callable[[], None]


def _then_joined(stream: ReplyStream, worker: threading.Thread) -> Generator[str, None, Reply]:
    try:
        yield from stream
    finally:
        stream.close()
        worker.join()
    return stream.reply


def _said(reply: Reply) -> Generator[str, None, Reply]:
    """A known reply as a stream's pieces: all of it at once."""
    yield reply.text
    return reply
