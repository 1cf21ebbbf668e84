"""`auralm demo-web`: the speech models in the browser (`auralm.apps.web_demo`): talk, a clip's tokens, chat."""

from __future__ import annotations

import argparse
import sys

from auralm.apps.arguments import UsageError, add_model_arguments, load_speech_chat, port


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-web", help="the speech models in the browser: talk, a clip's tokens, chat (needs auralm[demo])"
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port, default=7860, help="(default: 7860)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from auralm.apps.web_demo import build_app
    except ImportError as e:
        raise UsageError(f"the web demo needs Gradio and fastrtc: pip install 'auralm[demo]' ({e})") from None
    app = build_app(load_speech_chat(args))
    print(f"auralm demo-web: http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    app.launch(server_name=args.host, server_port=args.port, share=False, quiet=True)
    return 0
