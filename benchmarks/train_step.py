"""One LLM training step as `auralm train pretrain` runs it (LoRA + the sound rows, forward and backward): the
recipe's loss, whose output head sees only the learned positions, against the same loss taken from every
position's logits, on the same batches in the same run.

    python benchmarks/train_step.py                        # SmolLM2-135M + the shipped tokenizer, 8 rows × 512
    python benchmarks/train_step.py --device cuda --batch-size 32 --max-tokens 1024

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
        trainer.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--learned", type=float, default=0.09, help="the share of positions learned")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default=str(ROOT / "checkpoints" / "shipped" / "speech-tokenizer"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "train.jsonl"  # the recipe needs a clip to set up; the timed rows are random
        text = json.loads((SAMPLES / "texts.json").read_text())["question_en.flac"]
        manifest.write_text(json.dumps({"audio": str(SAMPLES / "question_en.flac"), "text": text}) + "\n")
        config = PretrainConfig(
            train=str(manifest), tokenizer=args.tokenizer, output_dir=str(Path(folder) / "run"), device=args.device,
            threads=args.threads, batch_size=1, max_tokens=args.max_tokens, progress=False,
        )  # fmt: skip
        trainer = recipe(config)
        trainer.setup()
        try:
            batches = [random_batch(trainer, args.batch_size, args.max_tokens, args.learned)
                       for _ in range(args.repeats)]  # fmt: skip
            with torch.no_grad():
                torch.testing.assert_close(trainer.loss_sum(batches[0]), every_position_loss(trainer, batches[0]),
                                           rtol=2e-3, atol=1e-2)  # fmt: skip
            timed = {
                "every position's logits": seconds_per_step(trainer, every_position_loss, batches),
                "the learned positions' logits (the recipe)": seconds_per_step(
                    trainer, type(trainer).loss_sum, batches
                ),
            }
        finally:
            trainer.cleanup()
    tokens = args.batch_size * args.max_tokens
    print(f"{device_name(trainer.world.device)}: rows {args.batch_size} × {args.max_tokens} tokens, "
          f"{args.learned:.0%} learned, {args.repeats} steps each")  # fmt: skip
    for label, seconds in timed.items():
        print(f"  {label:45s} {seconds:7.3f} s/step  {tokens / seconds:9.0f} tokens/s")
    reference, ours = timed.values()
    print(f"  ratio (recipe vs every position): {reference / ours:.2f}x")


if __name__ == "__main__":
    main()
