"""The one model every request to `auralm serve` shares (auralm.apps.server): one call on it at a time, a bounded
number of requests waiting for it, and chat requests that wait together answered together.

When the model comes free, the first waiting chat request takes every other one waiting with the same sampling
settings and the same wish to stream (up to `max_batch`) into one `SpeechChat.replies` (or `.streams`) call: one
padded batch, each decode step computing every request's next token, each request ending on its own max_tokens and
stop strings (or when its client hangs up, streamed). Greedy, each reply is the one the request gets alone. A
request the batch cannot take (its prompt over the LLM's context) fails the call before anything is generated; the
batch is then answered one request at a time, so only that one gets the error. Transcriptions hold the model alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from auralm.errors import AuralmError
from auralm.lm.chat import SpeechChat
from auralm.lm.messages import Message
from auralm.lm.replies import Reply, ReplyStream


class QueueFull(Exception):
    """More requests wait for the model than the server allows (OpenAI's 429)."""


@dataclass(eq=False)
class _Asked:
    """A chat request waiting for its reply."""

    messages: list[Message]
    options: dict[str, Any]  # max_new_tokens, temperature, top_p, stop (auralm.apps.server's _options)
    streamed: bool
    answer: asyncio.Future  # its Reply, or its ReplyStream when streamed

    def sampling(self) -> tuple[float, float]:
        return self.options["temperature"], self.options["top_p"]

    def batches_with(self, other: _Asked) -> bool:
        return self.streamed == other.streamed and self.sampling() == other.sampling()


class ModelQueue:
    """The model's turn: `take` it (the caller releases `lock`), `run` a function on it, or ask it for a chat
    `reply` or `stream`, batched with the others waiting (see the module's docstring)."""

    def __init__(self, chat: SpeechChat, max_waiting: int, max_batch: int):
        self.chat, self.max_waiting, self.max_batch = chat, max_waiting, max_batch
        self.lock = asyncio.Lock()
        self.waiting = 0
        self._asked: list[_Asked] = []  # chat requests not yet taken into a batch
        self._batches: set[asyncio.Task] = set()  # running batches (the event loop keeps only weak references)

    async def take(self) -> None:
        """Wait for the model; the caller releases `lock`. QueueFull when `max_waiting` requests wait already."""
        if self.waiting > self.max_waiting:
            raise QueueFull("too many requests waiting for the model; retry later")
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1

    async def run(self, fn: Callable[[], Any]) -> Any:
        """fn() in a worker thread once the model is free."""
        await self.take()
        try:
            return await run_in_threadpool(fn)
        finally:
            self.lock.release()

    async def reply(self, messages: list[Message], options: dict[str, Any]) -> Reply:
        """`SpeechChat.reply(messages, **options)`, generated in one batch with the requests waiting beside it."""
        return await self._ask(_Asked(messages, options, False, asyncio.get_running_loop().create_future()))

    async def stream(self, messages: list[Message], options: dict[str, Any]) -> ReplyStream:
        """`SpeechChat.stream(messages, **options)`, generated in one batch with the requests waiting beside it: the
        stream comes once the batch starts; closing it ends its rows."""
        return await self._ask(_Asked(messages, options, True, asyncio.get_running_loop().create_future()))

    async def _ask(self, asked: _Asked) -> Any:
        """The answer to `asked`, from the batch it leads when its turn comes or from the one that took it before. A
        request that hangs up does not cancel the batch it leads: the others' answers are theirs."""
        self._asked.append(asked)
        try:
            await self.take()
        except BaseException:
            if asked in self._asked:
                self._asked.remove(asked)
            raise
        if asked.answer.done():  # answered in another request's batch while it waited
            self.lock.release()
        else:
            batch = asyncio.create_task(self._answer(self._batch_led_by(asked)))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)
        try:
            return await asyncio.shield(asked.answer)
        except asyncio.CancelledError:  # the client left: a stream it will never read ends its rows once it comes
            asked.answer.add_done_callback(_close_unread)
            raise

    def _batch_led_by(self, asked: _Asked) -> list[_Asked]:
        """`asked` and the waiting requests that batch with it, up to max_batch, taken off the waiting list."""
        batch = [asked] + [a for a in self._asked if a is not asked and a.batches_with(asked)]
        batch = batch[: self.max_batch]
        self._asked = [a for a in self._asked if all(a is not b for b in batch)]
        return batch

    async def _answer(self, batch: list[_Asked]) -> None:
        """Every request of the batch answered (or given its error) and, streamed, its generation run; then the model
        is free."""
        try:
            await self._run(batch)
        finally:
            self.lock.release()

    async def _run(self, batch: list[_Asked]) -> None:
        first = batch[0]
        try:
            made = await run_in_threadpool(
                self.chat.streams if first.streamed else self.chat.replies,
                [asked.messages for asked in batch],
                [asked.options["max_new_tokens"] for asked in batch],
                [asked.options["stop"] for asked in batch],
                *first.sampling(),
            )
        except AuralmError as e:
            if len(batch) == 1:
                first.answer.set_exception(e)
            else:  # one at a time: only a request at fault gets its error
                for asked in batch:
                    await self._run([asked])
            return
        except Exception as e:  # a bug: every request of the batch hears of it (a 500 each)
            for asked in batch:
                asked.answer.set_exception(e)
            return
        for asked, answer in zip(batch, made.streams if first.streamed else made, strict=True):
            asked.answer.set_result(answer)
        if first.streamed:
            # the streams' pieces come as it runs, read by threads of the shared pool: a thread of its own, so that
            # readers waiting for their pieces never hold every thread the generation could run on
            await anyio.to_thread.run_sync(made.run, limiter=anyio.CapacityLimiter(1))


def _close_unread(answer: asyncio.Future) -> None:
    if not answer.cancelled() and answer.exception() is None and isinstance(answer.result(), ReplyStream):
        answer.result().close()
