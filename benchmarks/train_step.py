"""One LLM training step as `auralm train pretrain` runs it (LoRA + the sound rows, forward and backward): the
recipe's loss, whose output head sees only the learned positions, against the same loss taken from every
position's logits, on the same batches in the same run. With --widen-dims, the LLM widened for sound as the recipe
trains it (each widened layer split into a frozen weight and its trainable parts) against the same widened LLM
forming whole weights' gradients (what a gradient mask over whole weights costs).

    python benchmarks/train_step.py                        # SmolLM2-135M + the shipped tokenizer, 8 rows × 512
    python benchmarks/train_step.py --device cuda --batch-size 32 --max-tokens 1024
    python benchmarks/train_step.py --widen-dims 72 --widen-neurons 64 --widen-heads 0

Rows are random sound tokens with `--learned` of their positions (the end of each row) learned, as a packed
pretrain row holds about 9 % transcript tokens; the weights need not be trained for timing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from auralm.devices import device_name
from auralm.lm.widening import widen
from auralm.training.chat_dataset import IGNORE, TokenBatch
from auralm.training.pretrain import PretrainConfig, recipe

ROOT = Path(__file__).parents[1]
SAMPLES = ROOT / "auralm" / "samples"


def every_position_loss(trainer, batch: TokenBatch) -> torch.Tensor:
    """The recipe's summed cross-entropy, computed from the whole (B, L, vocab) logits."""
    with torch.autocast(trainer.world.device.type, dtype=torch.bfloat16, enabled=trainer.config.bf16):
        logits = trainer.model(input_ids=batch.ids, position_ids=batch.positions, use_cache=False).logits
    learned = batch.targets != IGNORE
    return F.cross_entropy(logits[learned].float(), batch.targets[learned], reduction="sum")


def random_batch(trainer, rows: int, length: int, learned: float) -> TokenBatch:
    """(rows, length) sound tokens whose last `learned` share of positions is learned (random text tokens)."""
    first_sound = trainer.tokenizer.convert_tokens_to_ids("<|sound_0000|>")
    ids = torch.randint(first_sound, first_sound + trainer.speech.config.n_codes, (rows, length))
    targets = torch.full_like(ids, IGNORE)
    targets[:, -round(learned * length) :] = torch.randint(0, first_sound, (rows, round(learned * length)))
    positions = torch.arange(length).expand(rows, length)
    return TokenBatch(*(t.to(trainer.world.device) for t in (ids, targets, positions)))


def seconds_per_step(trainer, loss_of, batches: list[TokenBatch]) -> float:
    """Mean seconds of forward + backward over `batches`, after one untimed step."""
    device = trainer.world.device
    for i, batch in enumerate([batches[0], *batches]):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss_of(trainer, batch).backward()
        trainer.model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / len(batches)


def head_timings(trainer, batches: list[TokenBatch]) -> dict[str, float]:
    """{label: seconds per step}: every position's logits, then the recipe's (the learned positions' only)."""
    with torch.no_grad():
        torch.testing.assert_close(trainer.loss_sum(batches[0]), every_position_loss(trainer, batches[0]),
                                   rtol=2e-3, atol=1e-2)  # fmt: skip
    return {
        "every position's logits": seconds_per_step(trainer, every_position_loss, batches),
        "the learned positions' logits (the recipe)": seconds_per_step(trainer, type(trainer).loss_sum, batches),
    }


def widened_timings(trainer, batches: list[TokenBatch]) -> dict[str, float]:
    """{label: seconds per step}: the widened LLM forming whole weights' gradients, then split (the recipe)."""
    split = trainer.model
    trainer.model = widen(trainer.llm, trainer.widening).requires_grad_(True).train()  # its parts as drawn anew
    whole = seconds_per_step(trainer, type(trainer).loss_sum, batches)
    trainer.model = split
    return {
        "whole widened weights' gradients": whole,
        "the parts' gradients only (the recipe)": seconds_per_step(trainer, type(trainer).loss_sum, batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--learned", type=float, default=0.09, help="the share of positions learned")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default=str(ROOT / "checkpoints" / "shipped" / "speech-tokenizer"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--widen-dims", type=int, default=0, help="> 0: time the widened LLM, not LoRA")
    parser.add_argument("--widen-neurons", type=int, default=128)
    parser.add_argument("--widen-heads", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "train.jsonl"  # the recipe needs a clip to set up; the timed rows are random
        text = json.loads((SAMPLES / "texts.json").read_text())["question_en.flac"]
        manifest.write_text(json.dumps({"audio": str(SAMPLES / "question_en.flac"), "text": text}) + "\n")
        config = PretrainConfig(
            train=str(manifest), tokenizer=args.tokenizer, output_dir=str(Path(folder) / "run"), device=args.device,
            threads=args.threads, batch_size=1, max_tokens=args.max_tokens, progress=False,
            widen_dims=args.widen_dims, widen_neurons=args.widen_neurons, widen_heads=args.widen_heads,
        )  # fmt: skip
        trainer = recipe(config)
        trainer.setup()
        try:
            batches = [random_batch(trainer, args.batch_size, args.max_tokens, args.learned)
                       for _ in range(args.repeats)]  # fmt: skip
            timed = widened_timings(trainer, batches) if args.widen_dims else head_timings(trainer, batches)
        finally:
            trainer.cleanup()
    tokens = args.batch_size * args.max_tokens
    print(f"{device_name(trainer.world.device)}: rows {args.batch_size} × {args.max_tokens} tokens, "
          f"{args.learned:.0%} learned, {args.repeats} steps each")  # fmt: skip
    for label, seconds in timed.items():
        print(f"  {label:45s} {seconds:7.3f} s/step  {tokens / seconds:9.0f} tokens/s")
    reference, ours = timed.values()
    print(f"  ratio (the recipe's vs the other): {reference / ours:.2f}x")


if __name__ == "__main__":
    main()
