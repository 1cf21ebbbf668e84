"""`auralm train RECIPE [KEY=VALUE ...]`: a training recipe (auralm.training) with its packaged YAML config,
or --config, overridden by KEY=VALUE; `auralm train RECIPE --list-settings` lists the keys with their values."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from auralm.apps.arguments import positive_float, positive_int

# Recipe name → its module (imported when `auralm train` runs: torch is heavy for --help).
TRAINING_RECIPES = {
    "tokenizer": "auralm.training.train_tokenizer",
    "pretrain": "auralm.training.pretrain",
    "sft": "auralm.training.sft",
    "distill": "auralm.training.distill",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a speech tokenizer, or teach an LLM sound tokens (a recipe + a YAML config)",
        epilog="Each recipe's settings, with their values: auralm train RECIPE --list-settings",
    )
    parser.add_argument("recipe", choices=TRAINING_RECIPES, help="what to train")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="settings over the config's (e.g. lr=3e-4 max_steps=100)"
    )
    parser.add_argument(
        "--config", help="a YAML file, or a packaged config's name (default: the recipe's own, e.g. 'tokenizer')"
    )
    parser.add_argument("--resume", action="store_true", help="go on from the run's latest checkpoint")
    parser.add_argument("--max-minutes", type=positive_float, help="stop (and save) after this long; --resume goes on")
    parser.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (on a busy 2-core machine 1 is steadier)"
    )
    parser.add_argument(
        "--list-settings",
        action="store_true",
        help="print the recipe's settings (each KEY with its value from the config and KEY=VALUE) and exit",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import importlib

    from auralm.training.config import load_config, packaged_config

    recipe = importlib.import_module(TRAINING_RECIPES[args.recipe])
    overrides = list(args.overrides)
    overrides += [f"max_minutes={args.max_minutes}"] if args.max_minutes else []
    overrides += [f"threads={args.threads}"] if args.threads else []
    path = packaged_config(args.config or args.recipe)
    config = load_config(recipe.CONFIG, path, overrides)
    if args.list_settings:
        print(f"auralm train {args.recipe}: its settings (KEY=VALUE), as {path.name} and the command line give them")
        print("\n".join(settings(config)))
        return 0
    return recipe.run(config, resume=args.resume)


def settings(config: Any) -> list[str]:
    """`key = value  (type)` for each setting of a recipe's config, flat as its YAML: the keys of a nested
    config (the tokenizer's shape) among them, but those it derives."""
    lines = []
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), typing.get_type_hints(type(config))[field.name]
        if dataclasses.is_dataclass(value):
            derived = field.metadata.get("derived", ())
            lines += [line for line in settings(value) if line.split(" = ")[0].strip() not in derived]
        else:
            lines.append(
                f"  {field.name} = {_yaml_value(value)}  ({kind.__name__ if isinstance(kind, type) else kind})"
            )
    return lines


def _yaml_value(value: Any) -> str:
    """A value as it is written in a config or after KEY=: null, true, 3e-4, [a, b]."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
