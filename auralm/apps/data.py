"""`auralm data synth`: synthetic English speech for training, made offline and deterministically from a seed
(auralm.data.synthetic_speech: recipes, voices, splits, the files written). `auralm data human`: a manifest of real
human speech with exact transcripts, for evaluation apart from the synthetic voices (auralm.data.human_speech)."""

from __future__ import annotations

import argparse

from auralm.apps.arguments import positive_float, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="make data: `auralm data synth` (synthetic speech), `auralm data human` (real speech, to test)"
    )
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    synth = jobs.add_parser(
        "synth", help="synthetic English speech from a seed: texts × voice families, augmented, in three splits"
    )
    synth.add_argument("--out", required=True, help="the folder to write (or resume: a rerun finishes it)")
    size = synth.add_mutually_exclusive_group(required=True)
    size.add_argument("--examples", type=positive_int, help="number of clips")
    size.add_argument("--hours", type=positive_float, help="estimated hours of audio")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--recipe", default="broad", help="what the data set is made of: broad (default) or v1")
    synth.add_argument(
        "--families", type=lambda text: tuple(text.split(",")),
        help="comma-separated voice families to use (default: all of the recipe's: espeak-ng, flite, festival, "
        "piper, hibari)",
    )  # fmt: skip
    synth.add_argument("--workers", type=positive_int, default=1, help="synthesis processes (one per core)")
    synth.set_defaults(run=run)
    human = jobs.add_parser(
        "human", help="a test manifest of real human speech with exact transcripts (the Asterisk prompts, Debian)"
    )
    human.add_argument("--out", required=True, help="the manifest to write (JSONL)")
    human.set_defaults(run=run_human)


def run(args: argparse.Namespace) -> int:
    from auralm.apps.arguments import UsageError
    from auralm.data.synthetic_speech import RECIPES, generate

    if args.recipe not in RECIPES:
        raise UsageError(f"--recipe {args.recipe}: use one of {', '.join(RECIPES)}")
    if args.families and (unknown := set(args.families) - set(RECIPES[args.recipe].families)):
        raise UsageError(f"--families: {', '.join(sorted(unknown))} not in recipe {args.recipe}")
    summary = generate(
        args.out, seed=args.seed, examples=args.examples, hours=args.hours, recipe=args.recipe,
        families=args.families, workers=args.workers, progress=True,
    )  # fmt: skip
    splits = ", ".join(f"{split} {s['examples']} / {s['hours']:.2f} h" for split, s in summary["splits"].items())
    print(f"{args.out}: {summary['examples']} clips, {summary['hours']:.2f} h ({splits}) from "
          f"{len(summary['voices'])} voices in {len(summary['families'])} families in {summary['seconds_taken']:.0f} s")  # fmt: skip
    return 0


def run_human(args: argparse.Namespace) -> int:
    from auralm.data.human_speech import asterisk_prompts, write_manifest

    rows = asterisk_prompts()
    write_manifest(args.out, rows)
    print(f"{args.out}: {len(rows)} prompts read by one speaker (Asterisk's, 8 kHz telephone band); `auralm eval` it")
    return 0
