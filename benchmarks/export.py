"""Dataset export throughput: `auralm export` (DataLoader workers decoding, windows batched across files)
against a per-file loop (decode, then `SpeechTokenizer.encode`, one file at a time, as `auralm tokenize`
does by default), measured in the same run on the same files, codes compared. A third row times the encoder
alone on the same windows, decoded and made into log-mels beforehand: what the export would reach if reading
the audio cost nothing, so the gap between the two rows is what decoding costs the export.

    python benchmarks/export.py                                   # CPU, the shipped tokenizer (tiny.en)
    python benchmarks/export.py --device cuda --shape medium --files 2000 --batch-size 64 --num-workers 8

--shape medium: a Whisper-medium-shaped tokenizer with random weights (speed does not depend on trained
weights, and no medium weights need to be carried to a GPU machine), with Ichigo's 30 s windows.
Prints the device, audio hours per hour (× real time) of each way, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

from auralm.data.export import FORMATS, export_rows
from auralm.data.export_job import export_dataset
from auralm.devices import device_name
from auralm.distributed import World
from auralm.tokenizer import SpeechTokenizer, TokenizerConfig, load_audio
from auralm.tokenizer.audio import SAMPLE_RATE
from auralm.tokenizer.speech_tokenizer import window_mels

DATA = Path(__file__).parents[1] / "tests" / "data"
MEDIUM = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=1024, n_audio_head=16, n_audio_layer=24,
    n_vocab=51864, n_text_ctx=448, n_text_state=1024, n_text_head=16, n_text_layer=24,
)  # fmt: skip


def load_tokenizer(shape: str, device: torch.device) -> SpeechTokenizer:
    if shape == "shipped":
        return SpeechTokenizer.from_pretrained("default", device=device)
    torch.manual_seed(0)
    config = TokenizerConfig(whisper="medium-random", n_state=1024, n_head=16, n_codes=512, window_seconds=30)
    return SpeechTokenizer(config, Whisper(MEDIUM)).to(device).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=("shipped", "medium"), default="shipped")
    parser.add_argument("--files", type=int, default=64, help="files to export (the test clips, repeated)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per batch for the export")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="jsonl needs no pyarrow")
    args = parser.parse_args()
    device = torch.device(args.device)
    tokenizer = load_tokenizer(args.shape, device)

    names = sorted(json.loads((DATA / "texts.json").read_text()))
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        lines = [{"audio": str(DATA / names[i % len(names)]), "id": f"{i:06d}"} for i in range(args.files)]
        manifest = work / "files.jsonl"
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        seconds = sum(len(load_audio(DATA / n)) for n in names) / SAMPLE_RATE * args.files / len(names)
        tokenizer.encode(load_audio(DATA / names[0]))  # warm-up

        synchronize(device)
        started = time.perf_counter()
        loop_codes = [tokenizer.encode(load_audio(line["audio"])) for line in lines]
        synchronize(device)
        loop_time = time.perf_counter() - started

        started = time.perf_counter()
        summary = export_dataset(
            manifest, work / "out", tokenizer, world=World(0, 1, device), batch_size=args.batch_size,
            num_workers=args.num_workers, shard_size=max(1, args.files // 4), fmt=args.format, progress=False,
        )  # fmt: skip
        export_time = time.perf_counter() - started
        exported = [torch.tensor(r["codes"]) for r in export_rows(work / "out")]
    finally:
        shutil.rmtree(work)
    mels = torch.cat([window_mels(load_audio(n), tokenizer.config)[0] for n in (line["audio"] for line in lines)])
    synchronize(device)
    started = time.perf_counter()
    for first in range(0, len(mels), args.batch_size):
        tokenizer.encode_windows(mels[first : first + args.batch_size]).cpu()
    encode_time = time.perf_counter() - started
    differ = sum(int((e != c).sum()) for e, c in zip(exported, loop_codes, strict=True)) / sum(map(len, loop_codes))

    shape = (
        "shipped tokenizer (Whisper tiny.en, 10 s windows)"
        if args.shape == "shipped"
        else "Whisper-medium shape, 30 s windows, random weights"
    )
    print(f"device: {device_name(device)}; {shape}; {args.files} files, {seconds / 3600:.3f} h of audio")
    print(f"{'method':34} {'seconds':>8} {'× real time':>12} {'vs loop':>8}")
    print(f"{'per-file loop (decode, encode)':34} {loop_time:8.2f} {seconds / loop_time:12.1f} {1.0:8.2f}")
    print(
        f"{f'auralm export (batch {args.batch_size}, {args.num_workers} workers)':34} {export_time:8.2f} "
        f"{seconds / export_time:12.1f} {loop_time / export_time:8.2f}"
    )
    print(
        f"{f'encoder alone (batch {args.batch_size})':34} {encode_time:8.2f} {seconds / encode_time:12.1f} "
        f"{loop_time / encode_time:8.2f}"
    )
    print(f"export's codes that differ from the loop's: {100 * differ:.3f} % (batched arithmetic; bf16 on a GPU)")
    if summary.failed:
        print(f"{summary.failed} files failed", file=sys.stderr)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
