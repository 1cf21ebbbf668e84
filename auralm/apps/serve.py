"""`auralm serve`: the OpenAI-compatible HTTP server (`auralm.apps.server`) on the speech models, or with
--upstream its audio half in front of another engine serving a merged model (`auralm.apps.upstream`); and how
either app is served: a listening socket, uvicorn, auralm's log lines on stderr."""

from __future__ import annotations

import argparse
import copy
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auralm.apps.arguments import (
    UsageError,
    add_max_audio_seconds,
    add_model_arguments,
    load_speech_chat,
    max_audio_seconds,
    port,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from auralm.apps.server import ServerLimits

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server: chat completions with audio, transcriptions"
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port, default=8000, help="(default: 8000)")
    parser.add_argument("--max-body-mb", type=positive_float, default=25.0, help="largest request body (default: 25)")
    add_max_audio_seconds(parser, "longest clip in a request")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=1024, help="largest max_tokens a request may ask (default: 1024)"
    )
    parser.add_argument(
        "--max-waiting", type=positive_int, default=8, help="requests waiting for the model; more get 429 (default: 8)"
    )
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=8,
        help="chat requests waiting together answered in one batch, each decode step shared (default: 8)",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="no LLM here: turn audio into sound-token text and forward chats to this OpenAI-compatible server "
        "(its base URL, e.g. http://localhost:8000/v1) serving a merged model (`auralm merge`); requests run "
        "concurrently, so --max-new-tokens, --max-waiting and --max-batch are the upstream's business",
    )
    parser.add_argument(
        "--upstream-model", metavar="NAME", help="the model to ask upstream (default: the one it lists)"
    )
    parser.add_argument("--upstream-key", metavar="KEY", help="API key the upstream server wants, if any")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.apps.server import ServerLimits, create_app
    from auralm.lm import DEFAULT_LLM

    limits = ServerLimits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_audio_seconds=max_audio_seconds(args),
        max_new_tokens=args.max_new_tokens,
        max_waiting=args.max_waiting,
        max_batch=args.max_batch,
    )
    if args.upstream is None and (args.upstream_model or args.upstream_key):
        raise UsageError("--upstream-model and --upstream-key go with --upstream URL")
    if args.upstream is not None and (args.llm or args.adapter):
        raise UsageError("with --upstream the LLM runs upstream (a merged folder): drop --llm and --adapter")
    try:  # before the model loads, so a busy port fails at once
        sock = listen(args.host, args.port)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from e
    if args.upstream is not None:
        serve(_upstream_app(args, limits), sock)
        return 0
    model_name = Path(args.llm).stem if args.llm else DEFAULT_LLM
    serve(create_app(load_speech_chat(args), model_name=model_name, limits=limits), sock)
    return 0


def _upstream_app(args: argparse.Namespace, limits: ServerLimits) -> FastAPI:
    """`auralm serve --upstream`: the speech tokenizer here, the LLM at the upstream server (checked now)."""
    import logging.config

    from auralm.apps.upstream import connect_upstream, create_upstream_app
    from auralm.devices import resolve_device
    from auralm.tokenizer import SpeechTokenizer

    logging.config.dictConfig(log_config())  # the start-up notes go where the access log goes
    speech = SpeechTokenizer.from_pretrained(args.checkpoint, whisper=args.whisper, device=resolve_device(args.device))
    upstream = connect_upstream(
        args.upstream, speech, args.upstream_model, args.upstream_key, allow_mismatch=args.allow_mismatch
    )
    return create_upstream_app(speech, upstream, limits)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: any free port) and listening. Raises OSError (address in use, …)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with auralm's loggers (the access log, start-up notes) at INFO on stderr."""
    import uvicorn

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["auralm"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on a listening socket until interrupted; says where on stderr, then logs each request."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_config=log_config(), log_level="warning", access_log=False))
    host, port = sock.getsockname()[:2]
    logger.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    server.run(sockets=[sock])
