"""Quality of a speech tokenizer + speech LLM on held-out clips, and what the tokenizer's window length costs.

    python benchmarks/quality.py                                   # the default models on data/speech-v1/val.jsonl
    python benchmarks/quality.py --limit 100 --checkpoint runs/tok/tokenizer --llm runs/pretrain/merged \\
        --adapter runs/sft/adapter                                 # a pair of your own (same flags as `auralm eval`)
    python benchmarks/quality.py … --checkpoint-30s runs/tok30/tokenizer   # the 30 s window's WER as well

The quality half is `auralm eval` (auralm.evaluation: WERs against plain Whisper in the same run, spoken-QA
accuracy, noise → refusal, text answers kept, codebook use, real-time factors). The window half times encoding
the same clips on CPU with the speech tokenizer's window and the other of 10 s / 30 s (Whisper's and Ichigo's):
a tokenizer of the same config with the other window and a random bottleneck unless --checkpoint-30s names a
trained one. Encoding time does not depend on the weights; the word error rate does, so it is given for trained
tokenizers only. Prints a markdown section for benchmarks/RESULTS.md (device, date, tree commit, the tables).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from auralm.apps.arguments import add_model_arguments, load_speech_chat, positive_int
from auralm.devices import device_name
from auralm.evaluation import evaluate, read_clips
from auralm.lm import DEFAULT_LLM
from auralm.quality_report import QualityReport, format_report
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, corpus_word_error_rate, load_audio

ROOT = Path(__file__).parents[1]
WINDOWS = (10, 30)  # seconds: a short window for short clips, and Whisper's (Ichigo's) full one


@dataclasses.dataclass
class WindowTiming:
    window_seconds: int
    weights: str  # "trained (PATH)" or "random"
    encode_seconds: float  # median over the repeats, all clips
    rtf: float  # encode_seconds ÷ audio seconds
    tokens_wer: float | None  # trained weights only


def window_tradeoff(
    speech: SpeechTokenizer,
    audio: list[torch.Tensor],
    references: list[str],
    tokens_wer: float,
    checkpoint_30s: str | None,
    repeats: int,
) -> list[WindowTiming]:
    """CPU encoding time of the clips (16 kHz (samples,) each) with each window of WINDOWS, one clip at a time as
    `auralm tokenize` does on CPU. speech: the evaluated tokenizer, whose tokens_wer is already measured; the other
    window runs on its Whisper backbone."""
    speech = speech if speech.device.type == "cpu" else copy.deepcopy(speech).cpu()
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    rows = []
    for window in WINDOWS:
        wer = None
        if window == speech.config.window_seconds:
            tokenizer, weights, wer = speech, "trained (evaluated above)", tokens_wer
        elif window == 30 and checkpoint_30s:
            tokenizer = SpeechTokenizer.from_pretrained(checkpoint_30s, whisper=speech.whisper)
            weights = f"trained ({checkpoint_30s})"
        else:
            torch.manual_seed(0)
            config = dataclasses.replace(speech.config, window_seconds=window)
            tokenizer, weights = SpeechTokenizer(config, speech.whisper).eval(), "random"
        tokenizer.encode(audio[:1], batch_size=1)  # warm-up: first-call allocations
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            codes = tokenizer.encode(audio, batch_size=1)
            times.append(time.perf_counter() - started)
        if wer is None and weights != "random":
            texts = [tokenizer.decode_text(c, temperatures=(0.0,)) for c in codes]
            wer = corpus_word_error_rate(references, texts)
        rows.append(WindowTiming(window, weights, statistics.median(times), statistics.median(times) / seconds, wer))
    return rows


def tree_commit() -> str:
    """The commit this tree is at, and whether it has changes of its own."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def section(args: argparse.Namespace, report: QualityReport, windows: list[WindowTiming]) -> str:
    models = ", ".join(
        f"{name} {value}"
        for name, value in (("tokenizer", args.checkpoint), ("LLM", args.llm), ("adapter", args.adapter))
        if value
    )
    limit = f"the first {report.clips}" if args.limit else f"all {report.clips}"
    lines = [
        f"## Quality report — {datetime.date.today()}, {report.device}",
        "",
        f"`python benchmarks/quality.py {shlex.join(sys.argv[1:])}` — tree {tree_commit()}; models: "
        f"{models or 'the defaults'}; {limit} clips of {args.manifest}; {args.noise_clips} noise clips; "
        f"{len(report.text_answers)} text questions against {args.base_llm}. Greedy decoding throughout.",
        "",
        format_report(report),
        "",
        f"Window length: encoding the same clips ({report.audio_seconds:.0f} s) on {device_name(torch.device('cpu'))},"
        f" one clip at a time, median of {args.repeats}. Encoding time does not depend on the weights, so a random "
        "bottleneck times a window as a trained one would; the word error rate needs trained weights "
        "(--checkpoint-30s for the 30 s window).",
        "",
        "| window | weights | encode seconds | RTF | speed-up over 30 s | tokens → text WER |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    full = next(w.encode_seconds for w in windows if w.window_seconds == 30)
    for w in windows:
        wer = "—" if w.tokens_wer is None else f"{100 * w.tokens_wer:.1f} %"
        lines.append(
            f"| {w.window_seconds} s | {w.weights} | {w.encode_seconds:.2f} | {w.rtf:.3f} | "
            f"{full / w.encode_seconds:.2f}× | {wer} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="data/speech-v1/val.jsonl", help="held-out clips (default: %(default)s)")
    parser.add_argument("--limit", type=positive_int, help="the first N clips only (default: all)")
    parser.add_argument("--base-llm", default=DEFAULT_LLM, help="the LLM the speech LLM was made from")
    parser.add_argument("--noise-clips", type=positive_int, default=30)
    parser.add_argument("--checkpoint-30s", help="a trained 30 s window tokenizer, for the window table's WER")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed encoding passes per window")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the whole report and the window timings here")
    parser.add_argument("--progress", action="store_true")
    add_model_arguments(parser)  # the models as `auralm eval` (and chat, serve) name them
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clips = read_clips(args.manifest, args.limit)
    chat = load_speech_chat(args)  # SpeechChat.from_pretrained, as every front end builds one
    report = evaluate(chat, clips, base_llm=args.base_llm, noise_clips=args.noise_clips, progress=args.progress)
    audio = [load_audio(clip.audio) for clip in clips]
    windows = window_tradeoff(
        chat.speech_tokenizer, audio, [c.text for c in clips], report.tokens_wer, args.checkpoint_30s, args.repeats
    )
    print(section(args, report, windows))
    if args.json:
        results = {"report": report.to_dict(), "windows": [dataclasses.asdict(w) for w in windows]}
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
