"""`auralm train RECIPE [KEY=VALUE ...]`: a training recipe (auralm.training) with its packaged YAML config,
or --config, overridden by KEY=VALUE."""

from __future__ import annotations

import argparse

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
        "train", help="train a speech tokenizer, or teach an LLM sound tokens (a recipe + a YAML config)"
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import importlib

    from auralm.training.config import load_config, packaged_config

    recipe = importlib.import_module(TRAINING_RECIPES[args.recipe])
    overrides = list(args.overrides)
    overrides += [f"max_minutes={args.max_minutes}"] if args.max_minutes else []
    overrides += [f"threads={args.threads}"] if args.threads else []
    config = load_config(recipe.CONFIG, packaged_config(args.config or args.recipe), overrides)
    return recipe.run(config, resume=args.resume)
