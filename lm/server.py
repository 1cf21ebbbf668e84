"""An OpenAI-compatible HTTP server for a `SpeechChat` (`auralm serve`).

    POST /v1/chat/completions      messages with text and `input_audio` parts (base64 wav/mp3/…), `stream`
    POST /v1/audio/transcriptions  multipart `file`
    GET  /v1/models, GET /health

Limits guard the one model every request shares: request body size, audio seconds, new tokens,
and how many requests may wait for the model (more get 429). A bad request gets a 4xx with an
OpenAI-style error body and changes nothing; the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from auralm.lm.chat import SpeechChat
from auralm.tokenizer import AudioError, load_audio


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 25 * 2**20  # OpenAI's audio upload limit
    max_audio_seconds: float = 300.0
    max_new_tokens: int = 1024
    max_waiting: int = 8  # requests queued for the model beyond the one it is answering


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def create_app(chat: SpeechChat, model_name: str, limits: ServerLimits = ServerLimits()) -> FastAPI:
    app = FastAPI(title="auralm")
    model_lock = asyncio.Lock()  # one generation at a time: they share the model
    waiting = 0

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": None}}
        return JSONResponse(body, status_code=error.status)

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
            return await request_error(request, RequestError(413, f"request body over {limits.max_body_bytes} bytes"))
        return await call_next(request)

    async def take_model() -> None:
        """Wait for the model (at most max_waiting requests wait); the caller releases model_lock."""
        nonlocal waiting
        if waiting > limits.max_waiting:
            raise RequestError(429, "too many requests waiting for the model; retry later", kind="rate_limit_error")
        waiting += 1
        try:
            await model_lock.acquire()
        finally:
            waiting -= 1

    async def with_model(fn):
        await take_model()
        try:
            return await run_in_threadpool(fn)
        finally:
            model_lock.release()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": waiting}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "auralm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request, limits)
        messages = _messages(body.get("messages"), limits)
        options = _options(body, limits)
        created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if body.get("stream"):
            await take_model()  # held until the stream ends; released by _StreamedReply
            return _StreamedReply(chat.stream(messages, **options), model_lock, completion_id, created, model_name)
        reply = await with_model(lambda: chat.generate(messages, **options))
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        }

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        try:
            form = await request.form()
        except Exception as e:  # starlette raises several types for malformed multipart bodies
            raise RequestError(400, f"expected a multipart form with a 'file' field ({e})") from e
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError(400, "missing the 'file' field (the audio to transcribe)", param="file")
        audio = _decode_audio(await upload.read(), upload.filename or "file", limits)
        part = {"type": "audio", "array": audio, "sampling_rate": 16000}
        return {"text": await with_model(lambda: chat.transcribe(part, max_new_tokens=limits.max_new_tokens))}

    return app


async def _json_body(request: Request, limits: ServerLimits) -> dict[str, Any]:
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


def _messages(messages: Any, limits: ServerLimits) -> list[dict[str, Any]]:
    """OpenAI messages → SpeechChat messages; `input_audio` parts decoded and checked here."""
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
                data = part["input_audio"].get("data")
                if not isinstance(data, str):
                    raise RequestError(400, f"{where}.input_audio.data must be a base64 string", param=where)
                try:
                    raw = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError) as e:
                    raise RequestError(400, f"{where}.input_audio.data is not valid base64 ({e})", param=where) from e
                parts.append({"type": "audio", "array": _decode_audio(raw, where, limits), "sampling_rate": 16000})
            else:
                raise RequestError(400, f"{where}: expected a 'text' or 'input_audio' part", param=where)
        converted.append({"role": message["role"], "content": parts})
    return converted


def _decode_audio(raw: bytes, name: str, limits: ServerLimits):
    try:
        return load_audio(raw, max_seconds=limits.max_audio_seconds, name=name)
    except AudioError as e:
        raise RequestError(400, str(e), param=name) from e


def _options(body: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
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


class _StreamedReply(StreamingResponse):
    """One generation as server-sent events. However the response ends (finished, or the client hung
    up mid-stream), the generation is stopped and then the model freed for the next request: the
    cleanup belongs to the response, since a hang-up can leave the event generator suspended, unclosed."""

    def __init__(self, pieces: Generator[str], lock: asyncio.Lock, completion_id: str, created: int, model: str):
        super().__init__(_sse(pieces, completion_id, created, model), media_type="text/event-stream")
        self.pieces, self.lock = pieces, lock

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a hang-up cancels this task; cleaning up must not be
                await self.body_iterator.aclose()
                await run_in_threadpool(self.pieces.close)  # ends the generation (SpeechChat.stream)
            self.lock.release()


async def _sse(pieces: Generator[str], completion_id: str, created: int, model: str) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for piece in iterate_in_threadpool(pieces):
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"
