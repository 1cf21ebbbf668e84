"""An OpenAI-compatible HTTP server for a `SpeechChat` (`auralm serve`).

    POST /v1/chat/completions      messages with text, `input_audio` parts (base64 wav/mp3/…) and vLLM's
                                   `audio_url` parts (data: URLs), `stream` (+ `stream_options.include_usage`)
    POST /v1/audio/transcriptions  multipart `file`; response_format json, text, verbose_json, srt or vtt
    GET  /v1/models, GET /health

Transcription (auralm.apps.transcription) runs Whisper itself for `whisper-1` (the speech tokenizer's backbone),
reads the sound tokens back with its decoder for `auralm-tokens`, and lets the LLM transcribe for the LLM's
name. Long audio is cut into the speech tokenizer's windows at quiet points, one segment each.

Limits guard the one model every request shares: request body size, audio seconds, new tokens,
and how many requests may wait for the model (more get 429). A bad request gets a 4xx with an
OpenAI-style error body and changes nothing; the next request is served as usual. Every request
leaves one line in the access log (logger "auralm.apps.server"). `auralm serve --upstream` serves the same
chat requests with the LLM in another engine (auralm.apps.upstream); `auralm.apps.serve` serves either app.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auralm.apps.model_queue import ModelQueue, QueueFull
from auralm.apps.transcription import (
    TOKENS_MODEL,
    TRANSCRIPTION_FORMATS,
    WHISPER_MODEL,
    read_windows,
    transcription_response,
)
from auralm.errors import AuralmError
from auralm.lm.chat import SpeechChat
from auralm.lm.replies import Reply, ReplyStream
from auralm.tokenizer import SAMPLE_RATE, AudioError, load_audio
from auralm.tokenizer.audio import MAX_AUDIO_SECONDS

PART_TYPES = "'text', 'input_audio' or 'audio_url'"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 25 * 2**20  # OpenAI's audio upload limit
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    max_new_tokens: int = 1024
    max_waiting: int = 8  # requests queued for the model beyond the one it is answering
    max_batch: int = 8  # chat requests answered together in one batch (auralm.apps.model_queue)


class RequestError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


def create_app(chat: SpeechChat, model_name: str, limits: ServerLimits = ServerLimits()) -> FastAPI:
    """The app serving `chat` as `model_name`; the chat takes clips as long as the server does."""
    app = base_app(limits)
    queue = ModelQueue(chat, limits.max_waiting, limits.max_batch)
    served = (model_name, WHISPER_MODEL, TOKENS_MODEL)
    chat.max_audio_seconds = limits.max_audio_seconds

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, error: QueueFull) -> JSONResponse:
        return error_response(RequestError(429, str(error), kind="rate_limit_error"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": queue.waiting}

    @app.get("/v1/models")
    async def models() -> dict:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "auralm"} for name in served]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _chat_completion(model_name, limits, queue, await json_body(request, limits))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await _transcription(chat, model_name, limits, queue, request)

    return app


def _check_model(name: Any, allowed: tuple[str, ...]) -> None:
    """An absent model means the served one; another name is OpenAI's 404."""
    if name is not None and name not in allowed:
        raise RequestError(
            404,
            f"the model {name!r} does not exist here; use {' or '.join(map(repr, allowed))}",
            param="model",
            code="model_not_found",
        )


async def _chat_completion(model_name: str, limits: ServerLimits, queue: ModelQueue, body: dict[str, Any]) -> Any:
    """POST /v1/chat/completions: the reply, or its stream (server-sent events)."""
    _check_model(body.get("model"), (model_name,))
    messages = checked_messages(body.get("messages"), limits)
    options = _options(body, limits)
    created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    include_usage = _include_usage(body)
    try:  # the prompt is made (and checked) before anything is generated; a stream's generation runs as it is sent
        if body.get("stream"):
            pieces = await queue.stream(messages, options)
            return _StreamedReply(pieces, completion_id, created, model_name, include_usage)
        reply = await queue.reply(messages, options)
    except AuralmError as e:
        raise _prompt_error(e) from e
    return completion(reply, completion_id, created, model_name)


def completion(reply: Reply, completion_id: str, created: int, model: str) -> dict[str, Any]:
    """A whole reply as OpenAI's chat.completion object."""
    choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
            "usage": _usage(reply)}  # fmt: skip


def known_reply(reply: Reply, body: dict[str, Any], model: str) -> Any:
    """A reply known before answering (`UNHEARD` to silence, an upstream's answers to a long clip's windows) as the
    request asked for it: a chat.completion, or its stream (server-sent events)."""
    created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    if body.get("stream"):
        events = _sse(ReplyStream.known(reply), completion_id, created, model, _include_usage(body))
        return StreamingResponse(events, media_type="text/event-stream")
    return completion(reply, completion_id, created, model)


def _prompt_error(error: AuralmError) -> RequestError:
    """A conversation SpeechChat cannot take (over the LLM's context) as OpenAI's 400."""
    return RequestError(400, str(error), param="messages", code="context_length_exceeded")


async def _transcription(
    chat: SpeechChat, model_name: str, limits: ServerLimits, queue: ModelQueue, request: Request
) -> Any:
    """POST /v1/audio/transcriptions, by the model the form names (auralm.apps.transcription; whisper-1 when it
    names none); one segment per window of the speech tokenizer."""
    try:
        form = await request.form()
    except ClientDisconnect:
        raise
    except Exception as e:  # starlette raises several types for malformed multipart bodies
        raise RequestError(400, f"expected a multipart form with a 'file' field ({e})") from e
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    _check_model(fields.get("model"), (WHISPER_MODEL, TOKENS_MODEL, model_name))
    reader = fields.get("model") or WHISPER_MODEL
    response_format = fields.get("response_format", "json")
    if response_format not in TRANSCRIPTION_FORMATS:
        raise RequestError(
            400, f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}", param="response_format"
        )
    if "word" in form.getlist("timestamp_granularities[]"):
        raise RequestError(400, "word timestamps are not available; segments are", param="timestamp_granularities")
    language, prompt = fields.get("language"), fields.get("prompt")
    if reader == model_name and (language or prompt):
        raise RequestError(
            400, f"language and prompt are for the {WHISPER_MODEL} and {TOKENS_MODEL} models, not the LLM", "model"
        )
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError(400, "missing the 'file' field (the audio to transcribe)", param="file")
    audio = _decode_audio(await upload.read(), upload.filename or "file", limits)
    windows = chat.speech_tokenizer.windows(audio)  # one segment each
    clips = [audio[w.start : w.end] for w in windows]
    try:
        texts, language = await queue.run(
            lambda: read_windows(chat, reader, clips, language, prompt, limits.max_new_tokens)
        )
    except AuralmError as e:  # a language the backbone does not know
        raise RequestError(400, str(e), param="language") from e
    return transcription_response(response_format, texts, windows, len(audio) / SAMPLE_RATE, language)


def base_app(limits: ServerLimits, lifespan: Callable[[FastAPI], AbstractAsyncContextManager] | None = None) -> FastAPI:
    """An app with what every auralm server has: OpenAI-style error bodies for RequestError, the body size
    limit, and the access log. lifespan: as FastAPI takes it."""
    app = FastAPI(title="auralm", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return error_response(error)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            # Read and drop what the client is sending (up to a bound) so it hears the 413
            # instead of a broken pipe; nothing of it is kept.
            dropped = 0
            async for chunk in request.stream():
                dropped += len(chunk)
                if dropped > 4 * limits.max_body_bytes:
                    break
            return error_response(RequestError(413, f"request body over {limits.max_body_bytes} bytes"))
        return await call_next(request)

    app.add_middleware(AccessLog)  # added last: outermost, so it sees every request and how it ended
    return app


def error_response(error: RequestError) -> JSONResponse:
    """OpenAI's error body for `error`, with its status."""
    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status)


async def json_body(request: Request, limits: ServerLimits) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > limits.max_body_bytes:  # a chunked body declares no length up front
        raise RequestError(413, f"request body over {limits.max_body_bytes} bytes")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from e
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


def checked_messages(messages: Any, limits: ServerLimits) -> list[dict[str, Any]]:
    """OpenAI messages → SpeechChat messages; audio parts decoded (once) and checked here."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    converted = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, f"messages[{i}] needs a role of system, user or assistant", param=f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(
                400, f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content"
            )
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
                raw = _base64(part["input_audio"].get("data"), f"{where}.input_audio.data")
                parts.append(_audio_part(raw, where, limits))
            elif kind == "audio_url" and isinstance(part.get("audio_url"), dict):
                parts.append(_audio_part(_data_url(part["audio_url"].get("url"), where), where, limits))
            elif kind in ("text", "input_audio", "audio_url"):
                raise RequestError(400, f"{where}: a '{kind}' part needs a '{kind}' field of the right type", where)
            else:
                raise RequestError(400, f"{where}: unsupported part type {kind!r}; use {PART_TYPES}", param=where)
        converted.append({"role": message["role"], "content": parts})
    return converted


def _base64(data: Any, where: str) -> bytes:
    if not isinstance(data, str):
        raise RequestError(400, f"{where} must be a base64 string", param=where)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"{where} is not valid base64 ({e})", param=where) from e


def _data_url(url: Any, where: str) -> bytes:
    """The bytes of a `data:[<type>];base64,<data>` URL; other URLs are refused (nothing is fetched)."""
    where = f"{where}.audio_url.url"
    if not isinstance(url, str):
        raise RequestError(400, f"{where} must be a string", param=where)
    header, comma, data = url.partition(",")
    if not header.startswith("data:"):
        raise RequestError(
            400,
            f"{where}: only data: URLs are accepted (data:audio/wav;base64,…); this server fetches nothing",
            param=where,
        )
    if not comma or not header.endswith(";base64"):
        raise RequestError(400, f"{where}: a data: URL here must be base64 (data:audio/wav;base64,…)", param=where)
    return _base64(data, where)


def _audio_part(raw: bytes, where: str, limits: ServerLimits) -> dict[str, Any]:
    """A SpeechChat audio part holding the decoded 16 kHz clip, so nothing decodes it again."""
    return {"type": "audio", "array": _decode_audio(raw, where, limits), "sampling_rate": SAMPLE_RATE}


def _decode_audio(raw: bytes, name: str, limits: ServerLimits) -> torch.Tensor:
    try:
        return load_audio(raw, max_seconds=limits.max_audio_seconds, name=name)
    except AudioError as e:
        raise RequestError(400, str(e), param=name) from e


def _options(body: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
    if body.get("n") not in (None, 1):
        raise RequestError(400, "n must be 1: one reply per request", param="n")
    max_new = body.get("max_completion_tokens", body.get("max_tokens", min(256, limits.max_new_tokens)))
    if not isinstance(max_new, int) or isinstance(max_new, bool) or not 1 <= max_new <= limits.max_new_tokens:
        raise RequestError(400, f"max_tokens must be an integer in 1 … {limits.max_new_tokens}", param="max_tokens")
    temperature, top_p = body.get("temperature", 0.0), body.get("top_p", 1.0)
    for name, value, high in (("temperature", temperature, 2.0), ("top_p", top_p, 1.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= high:
            raise RequestError(400, f"{name} must be a number in 0 … {high}", param=name)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError(400, "stop must be a string or a list of up to 4 strings", param="stop")
    return {"max_new_tokens": max_new, "temperature": float(temperature), "top_p": float(top_p), "stop": stop}


def _include_usage(body: dict[str, Any]) -> bool:
    """Whether a stream ends with a usage chunk (`stream_options.include_usage`, as OpenAI's)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not body.get("stream"):
        raise RequestError(400, "stream_options is only for streamed requests (stream: true)", "stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError(400, "stream_options must be an object like {'include_usage': true}", "stream_options")
    return options.get("include_usage", False)


def _usage(reply: Reply) -> dict[str, int]:
    total = reply.prompt_tokens + reply.completion_tokens
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens, "total_tokens": total}


class CleanedUpStream(StreamingResponse):
    """A streamed response whose `cleanup` runs however it ends: finished, or the client hung up mid-stream. A
    hang-up cancels the task and can leave the body's generator suspended, unclosed, so the cleanup belongs to
    the response and is shielded from the cancellation."""

    async def cleanup(self) -> None:
        """What the stream holds, released."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.cleanup()


class _StreamedReply(CleanedUpStream):
    """One reply as server-sent events; when the response ends (a client that hung up included), its generation
    ends too (its rows of the batch)."""

    def __init__(self, pieces: ReplyStream, completion_id: str, created: int, model: str, include_usage: bool):
        super().__init__(_sse(pieces, completion_id, created, model, include_usage), media_type="text/event-stream")
        self.pieces = pieces

    async def cleanup(self) -> None:
        await run_in_threadpool(self.pieces.close)


async def _sse(
    pieces: ReplyStream, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format: a role chunk, the text, a chunk with the finish
    reason, the usage (choices: []) when asked for, then `data: [DONE]`."""

    def event(choices: list, **extra) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    def chunk(delta: dict, finish: str | None = None) -> str:
        usage = {"usage": None} if include_usage else {}  # OpenAI: null on all but the usage chunk
        return event([{"index": 0, "delta": delta, "finish_reason": finish}], **usage)

    yield chunk({"role": "assistant", "content": ""})
    async for piece in iterate_in_threadpool(pieces):
        yield chunk({"content": piece})
    yield chunk({}, pieces.reply.finish_reason)
    if include_usage:
        yield event([], usage=_usage(pieces.reply))
    yield "data: [DONE]\n\n"


class AccessLog:
    """ASGI middleware: one log line per request (method, path, status, milliseconds). A client that
    hangs up before its body arrived, or mid-response, is one line too, not a traceback."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, done, gone = time.perf_counter(), None, False, False

        async def receive_and_note() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or (message["type"] == "http.disconnect" and not done)  # left before the response ended
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = message["status"]
            done = done or (message["type"] == "http.response.body" and not message.get("more_body", False))
            await send(message)

        def log(outcome: str) -> None:
            logger.info(f"{scope['method']} {scope['path']} {outcome} {(time.perf_counter() - started) * 1e3:.0f} ms")

        try:
            await self.app(scope, receive_and_note, send_and_note)
        except ClientDisconnect:
            gone = True
        except Exception:
            log("500 (error) after")
            raise
        if gone:
            log("client disconnected " + ("mid-body" if status is None else f"mid-response ({status})") + " after")
        else:
            log(str(status))
