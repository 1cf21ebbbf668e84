"""`auralm serve --upstream URL`: the audio half of a chat server in front of any OpenAI-compatible text server.

    client ──► auralm: decode audio parts, speech tokenizer (concurrent requests batched) → sound-token text
           ──► upstream (vLLM, TGI, `transformers serve`, …) serving a merged model (`auralm merge`) ──► reply

A request's audio parts become the sound-token text `SpeechChat` puts in its prompts (`ClipStrings`,
`with_audio_strings`), so the upstream model reads what the built-in server's model reads; every other field
(temperature, max_tokens, stop, stream, …) goes upstream as sent, and the answer comes back as the upstream
sent it (less the line saying what was heard that a model trained with sft's `heard_first` begins a reply with,
as `SpeechChat` strips it): streams relayed event by event, errors as OpenAI error bodies with the upstream's
status. As in
`SpeechChat`, a turn of silence is answered without the upstream, and a clip longer than the speech tokenizer's
window is asked window by window (one upstream request each, the replies joined and streamed as one piece).
No LLM is loaded here and nothing waits for a lock: requests run concurrently, and their clips are encoded in
shared batches (`SpeechBatcher`).

At start (`connect_upstream`) the upstream's model list names the model, and three one-token requests check
through the prompt token counts that its tokenizer holds this speech tokenizer's sound tokens, each as one
token, and no more of them. The speech tokenizer's hash, which a merged folder's config.json records, cannot
be read through OpenAI's API: that pairing is the operator's to keep.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import torch
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from auralm.apps.server import (
    CleanedUpStream,
    RequestError,
    ServerLimits,
    base_app,
    checked_messages,
    json_body,
    known_reply,
)
from auralm.errors import AuralmError
from auralm.lm.messages import ClipStrings, Message, audio_parts, in_windows, silent_turn, with_audio_strings
from auralm.lm.replies import UNHEARD, Reply, joined
from auralm.lm.streaming import HeardLine
from auralm.lm.vocabulary import SpeechTokenizerMismatchError
from auralm.tokenizer import SpeechTokenizer, codes_to_string
from auralm.tokenizer.token_format import HEARD_PREFIX, without_heard

logger = logging.getLogger(__name__)
CONNECT_SECONDS = 10.0  # to reach the upstream; an answer may take as long as generation takes
CHECK_SECONDS = 600.0  # a start-up check request: engines that load the model on first use take a while


class UpstreamError(AuralmError):
    """An upstream server that cannot be used: unreachable, or no single model to ask."""


@dataclass(frozen=True)
class Upstream:
    url: str  # the base URL OpenAI clients take, e.g. http://localhost:8000/v1
    model: str
    key: str | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


class SpeechBatcher:
    """The speech tokenizer shared by concurrent requests: clips that arrive within `wait` seconds of the first
    waiting one are encoded together, in a worker thread (the event loop keeps serving), one batch at a time;
    clips arriving meanwhile make the next batch."""

    def __init__(self, speech: SpeechTokenizer, wait: float = 0.005, max_clips: int = 32):
        self.speech, self.wait, self.max_clips = speech, wait, max_clips
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Clips waiting for a batch (not those being encoded)."""
        return len(self._pending)

    async def encode(self, clips: Sequence[Any]) -> list[torch.Tensor]:
        """Codes (T,) of each clip (audio as `SpeechTokenizer.encode` takes it)."""
        if not clips:
            return []
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in clips]
        self._pending.extend(zip(clips, futures, strict=True))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.wait)  # let requests arriving together join the batch
            batch, self._pending = self._pending[: self.max_clips], self._pending[self.max_clips :]
            try:
                codes = await run_in_threadpool(self.speech.encode, [clip for clip, _ in batch])
            except Exception as e:  # every request of the batch hears of it
                codes = [e] * len(batch)
            for (_, future), result in zip(batch, codes, strict=True):
                if future.done():  # its request was cancelled (the client left)
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def create_upstream_app(speech: SpeechTokenizer, upstream: Upstream, limits: ServerLimits | None = None) -> FastAPI:
    """The OpenAI-compatible front end: POST /v1/chat/completions (the built-in server's audio parts), GET
    /v1/models (the upstream model), GET /health. Of `limits` (default: ServerLimits()), the body size and audio
    length apply; the upstream bounds generation. `app.state.batcher` is the SpeechBatcher."""
    limits = limits or ServerLimits()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx2.Timeout(None, connect=CONNECT_SECONDS)
        async with httpx2.AsyncClient(timeout=timeout, headers=upstream.headers) as client:
            app.state.client = client
            yield

    app = base_app(limits, lifespan)
    app.state.batcher = batcher = SpeechBatcher(speech)
    clips = ClipStrings(speech)

    async def render(messages: list[Message]) -> list[dict[str, str]]:
        parts = audio_parts([messages])
        keys, strings, todo = clips.lookup(parts)
        codes = await batcher.encode(todo)
        (rendered,) = with_audio_strings([messages], clips.complete(keys, strings, codes))
        return rendered

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": batcher.waiting}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": upstream.model, "object": "model", "created": 0, "owned_by": "auralm"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await json_body(request, limits)
        # decoding the audio takes a while: off the event loop
        messages = await run_in_threadpool(checked_messages, body.get("messages"), limits)
        model = body.get("model") or upstream.model
        if await run_in_threadpool(silent_turn, messages, limits.max_audio_seconds):  # as the built-in server does
            return known_reply(UNHEARD, body, model)
        windows = await run_in_threadpool(in_windows, messages, {}, speech, limits.max_audio_seconds)
        client = request.app.state.client
        if len(windows) > 1:  # a clip longer than the speech tokenizer's window: asked window by window, as SpeechChat
            asked = {key: value for key, value in body.items() if key != "stream_options"} | {"model": model}
            replies = [await _ask(client, upstream.url, asked | {"messages": await render(w)}) for w in windows]
            return known_reply(joined(replies), body, model)
        body |= {"messages": await render(messages), "model": model}
        return await _forward(client, upstream.url, body)

    return app


async def _forward(client: httpx2.AsyncClient, url: str, body: dict[str, Any]) -> Response:
    """The upstream's answer to a chat request: a stream relayed as it comes, or the whole body as it is."""
    request = client.build_request("POST", f"{url}/chat/completions", json=body)
    try:
        response = await client.send(request, stream=True)
        if response.status_code < 400 and body.get("stream"):
            return _RelayedStream(response, url)
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
    except httpx2.TransportError as e:
        raise _unreachable(url, e) from e
    if response.status_code >= 400:
        raise _upstream_error(response.status_code, raw)
    return Response(_answer_without_heard(raw), response.status_code, media_type=response.headers.get("content-type"))


def _answer_without_heard(raw: bytes) -> bytes:
    """A chat completion's body with each choice's heard line taken off; any other body as it is."""
    try:
        answer = json.loads(raw)
        choices = [c for c in answer["choices"] if (c["message"].get("content") or "").startswith(HEARD_PREFIX)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw
    for choice in choices:
        choice["message"]["content"] = without_heard(choice["message"]["content"])
    return json.dumps(answer).encode() if choices else raw


async def _ask(client: httpx2.AsyncClient, url: str, body: dict[str, Any]) -> Reply:
    """The upstream's whole reply to a chat request (not streamed), with its token counts."""
    response = await _forward(client, url, body | {"stream": False})
    answer = json.loads(response.body)
    choice, usage = answer["choices"][0], answer.get("usage") or {}
    return Reply(choice["message"]["content"] or "", choice.get("finish_reason") or "stop",
                 usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))  # fmt: skip


class _RelayedStream(CleanedUpStream):
    """An upstream stream relayed chunk by chunk. However it ends (done, or the client hung up), the upstream
    connection is closed, which ends the upstream's generation too."""

    def __init__(self, response: httpx2.Response, url: str):
        media_type = response.headers.get("content-type", "text/event-stream")
        events = _events_without_heard(_relay(response, url))
        super().__init__(events, status_code=response.status_code, media_type=media_type)
        self.upstream = response

    async def cleanup(self) -> None:
        await self.upstream.aclose()


async def _relay(response: httpx2.Response, url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx2.TransportError as e:  # the upstream went away mid-stream: an error event, as OpenAI streams one
        error = {"message": _unreachable(url, e).message, "type": "upstream_error", "param": None, "code": None}
        yield f"\n\ndata: {json.dumps({'error': error})}\n\n".encode()


async def _events_without_heard(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Server-sent events relayed once each is whole, each choice's content passed through its own `HeardLine`."""
    lines: defaultdict[int, HeardLine] = defaultdict(HeardLine)
    pending = b""
    async for chunk in chunks:
        *events, pending = (pending + chunk).split(b"\n\n")
        if events:
            yield b"".join(_event_without_heard(event, lines) + b"\n\n" for event in events)
    if pending:
        yield pending


def _event_without_heard(event: bytes, lines: defaultdict[int, HeardLine]) -> bytes:
    """One stream event with each choice's delta content as its HeardLine lets it through (what it held back, too,
    at the choice's end); an event that is not a chat completion chunk as it is."""
    if not event.startswith(b"data: "):
        return event
    try:
        chunk = json.loads(event[len(b"data: ") :])
        choices = chunk["choices"]
    except (ValueError, KeyError, TypeError):  # "[DONE]", an error event
        return event
    for choice in choices:
        line, delta = lines[choice.get("index", 0)], choice.get("delta") or {}
        text = line.feed(delta.get("content") or "") + (line.end() if choice.get("finish_reason") else "")
        if delta.get("content") is not None or text:
            choice["delta"] = delta | {"content": text}
    return b"data: " + json.dumps(chunk).encode()


def _unreachable(url: str, error: httpx2.TransportError) -> RequestError:
    reason = str(error) or type(error).__name__
    return RequestError(502, f"the upstream server {url} did not answer ({reason})", kind="upstream_error")


def _upstream_error(status: int, raw: bytes) -> RequestError:
    """An upstream error answer as a RequestError with its status: an OpenAI error body as it is (vLLM, TGI),
    FastAPI's {"detail": …} (transformers serve) or plain text as its message."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type") or "upstream_error"
        return RequestError(status, error["message"], param=error.get("param"), kind=kind, code=error.get("code"))
    detail = body.get("detail", error) if isinstance(body, dict) else None
    if detail is None:
        message = raw.decode(errors="replace").strip()[:1000] or f"status {status}"
    else:
        message = detail if isinstance(detail, str) else json.dumps(detail)
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    return RequestError(status, f"upstream: {message}", kind=kind)


# ---- at start ----------------------------------------------------------------------------------------------


def connect_upstream(
    url: str,
    speech: SpeechTokenizer,
    model: str | None = None,
    key: str | None = None,
    allow_mismatch: bool = False,
) -> Upstream:
    """The upstream at `url` (the base URL OpenAI clients take, …/v1) and the model to ask: `model`, or the one
    its GET /models lists. Checks that the model's tokenizer holds the speech tokenizer's sound tokens and no
    more (`check_sound_tokens`). Raises UpstreamError (unreachable; no single model) or
    SpeechTokenizerMismatchError (unless allow_mismatch: then a warning)."""
    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx2.Timeout(CHECK_SECONDS, connect=CONNECT_SECONDS)
    # a connection each: uvicorn drops one after a crashed request (transformers serve's GET /models without a
    # hub cache), and a kept one would fail the next request
    limits = httpx2.Limits(max_keepalive_connections=0)
    with httpx2.Client(timeout=timeout, headers=headers, limits=limits) as client:
        listed = _listed_models(client, url)
        if model is None:
            if not listed:
                found = "lists no models" if listed == [] else "does not list its models"
                raise UpstreamError(f"the upstream server {url} {found}; name the model with --upstream-model")
            if len(listed) > 1:
                raise UpstreamError(
                    f"the upstream server {url} serves {len(listed)} models ({', '.join(listed)}); "
                    "pick one with --upstream-model"
                )
            (model,) = listed
        elif listed is not None and model not in listed:  # transformers serve lists its hub cache, not its model
            logger.info("the upstream server does not list %r; asking for it as named", model)
        upstream = Upstream(url, model, key)
        try:
            check_sound_tokens(lambda text: _prompt_tokens(client, upstream, text), speech)
        except SpeechTokenizerMismatchError as e:
            if not allow_mismatch:
                raise
            logger.warning("%s (allowed by --allow-mismatch)", e)
    logger.info(
        "upstream model %r at %s; the speech tokenizer hash it was merged for cannot be read through the OpenAI "
        "API: it must be %s (auralm merge prints the hash it records)",
        model, url, speech.tokenizer_hash,
    )  # fmt: skip
    return upstream


def check_sound_tokens(prompt_tokens: Callable[[str], int | None], speech: SpeechTokenizer) -> None:
    """Check an LLM tokenizer through `prompt_tokens(text)`, the token count of a prompt holding `text`.

    With K = the speech tokenizer's vocab_size, one more <|sound_0000|> and <|sound_{K-1}|> must add exactly two
    tokens (present, one token each), and two <|sound_{K}|> must not (absent: more sound tokens mean another
    speech tokenizer's). Plain tokenizers split an unknown token into several, or fold it into one <unk> however
    many follow, so counts tell both cases apart. Raises SpeechTokenizerMismatchError; returns quietly when the
    server reports no token counts (prompt_tokens returns None), saying so in the log.
    """
    k = speech.config.vocab_size
    counts = [prompt_tokens(codes_to_string(codes)) for codes in ([0, k - 1], [0, 0, k - 1, k - 1], [0, k - 1, k, k])]
    if None in counts:
        logger.warning("the upstream server reports no prompt token counts: its sound tokens were not checked")
        return
    base, known, beyond = counts
    if known - base != 2:
        raise SpeechTokenizerMismatchError(
            f"the upstream model's tokenizer lacks the sound tokens <|sound_0000|> … <|sound_{k - 1:04d}|> of this "
            f"speech tokenizer ({k} codes); serve the folder `auralm merge` wrote for it"
        )
    if beyond - base == 2:
        raise SpeechTokenizerMismatchError(
            f"the upstream model's tokenizer has sound tokens beyond this speech tokenizer's {k} codes "
            f"(<|sound_{k:04d}|> is one token there): it was trained on another speech tokenizer's codes"
        )
    logger.info("the upstream model's tokenizer holds the %d sound tokens of this speech tokenizer", k + 2)


def _listed_models(client: httpx2.Client, url: str) -> list[str] | None:
    """The model ids GET /models lists; None when it answers with anything but a list."""
    try:
        response = client.get(f"{url}/models")
    except httpx2.TransportError as e:
        raise UpstreamError(f"cannot reach the upstream server {url} ({e or type(e).__name__}); is it running?") from e
    if response.status_code == 404:
        raise UpstreamError(f"{url}/models is not found: give the base URL OpenAI clients take (often …/v1)")
    try:
        data = response.json()["data"] if response.status_code == 200 else None
        return None if data is None else [str(entry["id"]) for entry in data]
    except (ValueError, KeyError, TypeError):
        return None


def _prompt_tokens(client: httpx2.Client, upstream: Upstream, text: str) -> int | None:
    """The prompt token count the upstream reports for a one-token reply to `text`."""
    body = {"model": upstream.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    try:
        response = client.post(f"{upstream.url}/chat/completions", json=body)
    except httpx2.TransportError as e:
        raise UpstreamError(f"the upstream server {upstream.url} did not answer ({e or type(e).__name__})") from e
    if response.status_code >= 400:
        error = _upstream_error(response.status_code, response.content)
        raise UpstreamError(f"the upstream server refused a test request for model {upstream.model!r}: {error}")
    try:
        return response.json()["usage"]["prompt_tokens"]
    except (ValueError, KeyError, TypeError):  # not JSON, or no usage: the caller says it could not check
        return None
