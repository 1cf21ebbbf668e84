"""Length-bucketed, shuffled batches: the same global batches for any number of ranks, resumable exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from auralm.data import DataError


class BucketBatchSampler(Sampler[list[int]]):
    """Global batches of `batch_size` items of alike length, in an order fixed by (seed, epoch).

    Each epoch: shuffle the items by (seed, epoch); drop the remainder that does not fill a last global
    batch (different items each epoch); cut the order into buckets of `bucket_batches` global batches and
    sort each bucket by length, so a batch's clips are alike and padding is small; cut into global
    batches; shuffle the batches.

    Ranks and gradient accumulation: rank r of `world_size`, accumulating `micro_batches` per step,
    takes micro-batch m of each global batch as batch[m * world_size + r :: world_size * micro_batches].
    The slices of all ranks and micro-batches make up the global batch, and one process with
    micro_batches = W sees exactly the slices that W processes see. Interleaved slices of a
    length-sorted batch give every rank alike lengths.

    Position: call `advance()` once per global batch the loop has consumed (after the optimizer step);
    `state_dict()` then says where the next batch starts, and `load_state_dict` restores it. The
    sampler's own iteration changes nothing, so DataLoader workers fetching ahead do not move it.
    `iter()` starts at the saved position; `len()` is the number of lists it will yield.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        micro_batches: int = 1,
        bucket_batches: int = 64,
    ):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0 … {world_size - 1} (world_size {world_size})")
        if batch_size % (world_size * micro_batches):
            raise DataError(
                f"batch_size {batch_size} does not split evenly into world_size × micro_batches = "
                f"{world_size} × {micro_batches}; make it a multiple of {world_size * micro_batches}"
            )
        if len(lengths) < batch_size:
            raise DataError(f"{len(lengths)} items do not fill one batch of {batch_size}; lower batch_size")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size, self.seed, self.bucket_batches = batch_size, seed, bucket_batches
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.batches_per_epoch = len(self.lengths) // batch_size
        self.epoch = 0
        self.batches_done = 0  # global batches of this epoch already consumed

    def global_batches(self, epoch: int) -> np.ndarray:
        """Every global batch of `epoch`, in order: (batches_per_epoch, batch_size) item indices."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))[: self.batches_per_epoch * self.batch_size]
        bucket = self.batch_size * self.bucket_batches
        for start in range(0, len(order), bucket):
            chunk = order[start : start + bucket]
            order[start : start + bucket] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        batches = order.reshape(self.batches_per_epoch, self.batch_size)
        return batches[rng.permutation(self.batches_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        parts = self.world_size * self.micro_batches
        for batch in self.global_batches(self.epoch)[self.batches_done :]:
            for micro in range(self.micro_batches):
                yield batch[micro * self.world_size + self.rank :: parts].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.batches_done) * self.micro_batches

    def advance(self) -> None:
        """Record one more global batch consumed; past an epoch's last, the next epoch begins."""
        self.batches_done += 1
        if self.batches_done == self.batches_per_epoch:
            self.epoch, self.batches_done = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_items": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "batch_size", "num_items"):
            if state[key] != self.state_dict()[key]:
                raise DataError(
                    f"the saved data position is for {key} {state[key]}, this run has {self.state_dict()[key]}: "
                    "resuming exactly needs the same data, batch size and seed"
                )
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
