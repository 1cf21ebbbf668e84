"""`auralm merge --out DIR`: the speech LLM as one plain Hugging Face folder any engine loads (README: Scaling
out)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="write the speech LLM as one plain Hugging Face folder that any engine serves (vLLM, TGI, …)"
    )
    parser.add_argument(
        "--llm",
        help="Hugging Face folder or .gguf file; smollm2 = the packaged SmolLM2-135M-Instruct "
        "(default, with neither --llm nor --adapter: the shipped speech model, SmolLM2 + its speech adapter)",
    )
    parser.add_argument("--adapter", help="a speech adapter folder (as `auralm train pretrain|sft` writes) to merge in")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write; it must not exist, or be empty")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="of the saved weights (default: float32, exactly the weights auralm runs, so replies match; "
        "engines cast on load, e.g. vllm --dtype bfloat16; bfloat16 halves the folder)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from auralm.lm.merge import describe_merged, merge_speech_llm

    folder = merge_speech_llm(args.llm, args.adapter, out=args.out, dtype=getattr(torch, args.dtype))
    print(describe_merged(folder))
    print(
        f"serve it with any engine that loads Llama-family folders, e.g. `vllm serve {folder}` or "
        f"`transformers serve`; send audio as `auralm tokenize --format string` text"
    )
    return 0
