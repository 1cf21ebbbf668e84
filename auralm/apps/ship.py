"""`auralm ship tokenizer|adapter DIR`: a trained tokenizer (first) or adapter becomes the package's shipped default
(auralm.apps.shipping)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ship", help="make a trained tokenizer or adapter the package's shipped default (float16, hash-pinned)"
    )
    parser.add_argument("what", choices=("tokenizer", "adapter"), help="tokenizer first; then the adapter on it")
    parser.add_argument("source", help="the trained tokenizer folder, or the adapter folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from auralm.apps.shipping import SHIPPED_BUDGET_MB, ship_adapter, ship_tokenizer, shipped_megabytes

    folder = (ship_tokenizer if args.what == "tokenizer" else ship_adapter)(args.source)
    total = shipped_megabytes()
    print(f"shipped {args.source} as {folder}; everything shipped: {total:.1f} MB of {SHIPPED_BUDGET_MB} MB")
    if total > SHIPPED_BUDGET_MB:
        print(
            f"error: the shipped models exceed {SHIPPED_BUDGET_MB} MB; shrink them before committing", file=sys.stderr
        )
        return 1
    return 0
