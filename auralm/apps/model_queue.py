"""The one model every request to `auralm serve` shares (auralm.apps.server): one call on it at a time, a bounded
number of requests waiting for it, and chat requests that wait together answered together.

When the model comes free, the first waiting chat request takes every other one waiting with the same sampling
settings (up to `max_batch`) into one `SpeechChat.replies` call: one padded batch, each decode step computing every
request's next token, each request ending on its own max_tokens and stop strings. Greedy, each reply is the one the
request gets alone. A request the batch cannot take (its prompt over the LLM's context) fails the call before
anything is generated; the batch is then answered one request at a time, so only that one gets the error.
Streamed replies and transcriptions hold the model alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from auralm.errors import AuralmError
from auralm.lm.chat import SpeechChat
from auralm.lm.messages import Message
from auralm.lm.replies import Reply


class QueueFull(Exception):
    """More requests wait for the model than the server allows (OpenAI's 429)."""


@dataclass(eq=False)
class _Asked:
    """A chat request waiting for its reply."""

    messages: list[Message]
    options: dict[str, Any]  # max_new_tokens, temperature, top_p, stop (auralm.apps.server's _options)
    answer: asyncio.Future

    def sampling(self) -> tuple[float, float]:
        return self.options["temperature"], self.options["top_p"]


class ModelQueue:
    """The model's turn: `take` it (the caller releases `lock`), `run` a function on it, or ask it for a chat
    `reply`, batched with the others waiting (see the module's docstring)."""

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
        """`SpeechChat.reply(messages, **options)`, generated in one batch with the requests waiting beside it.
        A request that hangs up does not cancel the batch it leads: the others' replies are theirs."""
        asked = _Asked(messages, options, asyncio.get_running_loop().create_future())
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
        return await asyncio.shield(asked.answer)

    def _batch_led_by(self, asked: _Asked) -> list[_Asked]:
        """`asked` and the waiting requests that sample as it does, up to max_batch, taken off the waiting list."""
        batch = [asked] + [a for a in self._asked if a is not asked and a.sampling() == asked.sampling()]
        batch = batch[: self.max_batch]
        self._asked = [a for a in self._asked if all(a is not b for b in batch)]
        return batch

    async def _answer(self, batch: list[_Asked]) -> None:
        """Every request of the batch answered (or given its error); then the model is free."""
        try:
            await self._replies(batch)
        finally:
            self.lock.release()

    async def _replies(self, batch: list[_Asked]) -> None:
        try:
            if len(batch) == 1:  # SpeechChat.reply: a conversation that goes on reuses its KV cache
                replies = [await run_in_threadpool(self.chat.reply, batch[0].messages, **batch[0].options)]
            else:
                replies = await run_in_threadpool(
                    self.chat.replies,
                    [asked.messages for asked in batch],
                    [asked.options["max_new_tokens"] for asked in batch],
                    [asked.options["stop"] for asked in batch],
                    *batch[0].sampling(),
                )
        except AuralmError as e:
            if len(batch) == 1:
                batch[0].answer.set_exception(e)
            else:  # one at a time: only a request at fault gets its error
                for asked in batch:
                    await self._replies([asked])
            return
        except Exception as e:  # a bug: every request of the batch hears of it (a 500 each)
            for asked in batch:
                asked.answer.set_exception(e)
            return
        for asked, reply in zip(batch, replies, strict=True):
            asked.answer.set_result(reply)
