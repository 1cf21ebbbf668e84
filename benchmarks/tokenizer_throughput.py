"""Tokenizer throughput (named so, not tokenize.py, which would shadow the standard library): batched `SpeechTokenizer.encode` against a per-file loop that works the
way Ichigo's `quantize` does (one clip at a time, each padded to 30 s), measured in the same run.

    python benchmarks/tokenizer_throughput.py                     # CPU, Whisper tiny.en backbone
    python benchmarks/tokenizer_throughput.py --device cuda       # on a GPU

Speed does not depend on trained weights: the bottleneck here is random. Prints the device,
tokens per second, the real-time factor (wall time ÷ audio time) and each ratio to the loop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from auralm.checkpoints import load_whisper
from auralm.devices import device_name
from auralm.tokenizer import SpeechTokenizer, TokenizerConfig, load_audio
from auralm.tokenizer.audio import SAMPLE_RATE
from auralm.tokenizer.backbone import log_mel_for_tokens

DATA = Path(__file__).parents[1] / "tests" / "data"


def per_file_loop(tokenizer: SpeechTokenizer, clips: list[torch.Tensor]) -> list[torch.Tensor]:
    """Ichigo's way: each clip alone through mel → encoder → quantizer."""
    codes = []
    for clip in clips:
        mel = log_mel_for_tokens(clip, tokenizer.config.n_mels)[None]
        codes.append(tokenizer.encode_windows(mel)[0, : tokenizer.num_codes(len(clip))].cpu())
    return codes


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--whisper", default="tiny.en", help="backbone name (default: tiny.en)")
    parser.add_argument("--clips", type=int, default=32, help="clips to tokenize (fixtures, repeated)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()
    device = torch.device(args.device)

    whisper = load_whisper(args.whisper)
    dims = whisper.dims
    config = TokenizerConfig(
        whisper=args.whisper, n_mels=dims.n_mels, n_state=dims.n_audio_state, n_head=dims.n_audio_head
    )
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(config, whisper).to(device).eval()

    names = sorted(json.loads((DATA / "texts.json").read_text()))
    fixtures = [load_audio(DATA / name) for name in names]
    clips = [fixtures[i % len(fixtures)] for i in range(args.clips)]
    seconds = sum(len(c) for c in clips) / SAMPLE_RATE
    tokens = sum(tokenizer.num_codes(len(c)) for c in clips)

    per_file_loop(tokenizer, clips[:2])  # warm-up
    loop_time, reference = timed(lambda: per_file_loop(tokenizer, clips), device)
    print(
        f"device: {device_name(device)}; backbone: Whisper {args.whisper}; {len(clips)} clips, {seconds:.0f} s of audio"
    )
    print(f"{'method':24} {'seconds':>8} {'tokens/s':>10} {'RTF':>8} {'vs loop':>8}")
    print(
        f"{'per-file loop (Ichigo)':24} {loop_time:8.2f} {tokens / loop_time:10.0f} {loop_time / seconds:8.4f} {1.0:8.2f}"
    )
    for batch_size in map(int, args.batch_sizes.split(",")):
        elapsed, codes = timed(lambda b=batch_size: tokenizer.encode(clips, batch_size=b), device)
        identical = all(torch.equal(a, b) for a, b in zip(codes, reference, strict=True))
        print(
            f"{f'batched encode, batch {batch_size}':24} {elapsed:8.2f} {tokens / elapsed:10.0f} "
            f"{elapsed / seconds:8.4f} {loop_time / elapsed:8.2f}" + ("" if identical else "  (codes differ!)")
        )


if __name__ == "__main__":
    with torch.inference_mode():
        main()
