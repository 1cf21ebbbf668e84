"""What every recipe's training loop needs beside its own maths: the learning-rate schedule, a stop
flag raised by time limits and signals, and the metrics log.

A recipe reads top to bottom (nanoGPT style); these are its helpers, not a framework.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from auralm.distributed import World, init_distributed
from auralm.training.audio_dataset import SkippedExamples
from auralm.training.checkpointing import Checkpoints
from auralm.training.config import ConfigError, RunConfig


def lr_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay_steps: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over `warmup_steps`, then down to 10% of the peak at `total_steps`: by a cosine
    (`decay_steps` None), or held at the peak until the last `decay_steps`, which fall linearly
    (warmup-stable-decay). Under the second, a run can be given more steps at any resume, and any of
    its checkpoints can be cooled down into a finished model by resuming a copy with `total_steps` = its step
    + `decay_steps`: the factor depends only on the step and these settings, not on what the run was told before.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay_steps is not None:
            left = total_steps - step
            return 0.1 + 0.9 * min(1.0, max(0, left) / max(1, decay_steps))
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Stopper:
    """Says when to save and when to stop: every `save_every_minutes`, after `max_minutes`, and on
    SIGINT/SIGTERM (Ctrl-C, a scheduler's kill), which finish the step under way, save, then exit."""

    def __init__(self, max_minutes: float | None, save_every_minutes: float | None):
        self.started = self.last_save = time.monotonic()
        self.max_minutes, self.save_every_minutes = max_minutes, save_every_minutes
        self.signal: str | None = None
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, number: int, frame: Any) -> None:
        self.signal = signal.Signals(number).name

    @property
    def out_of_time(self) -> bool:
        return self.max_minutes is not None and time.monotonic() - self.started >= 60 * self.max_minutes

    @property
    def should_stop(self) -> bool:
        return self.signal is not None or self.out_of_time

    def save_due(self) -> bool:
        if self.save_every_minutes is None or time.monotonic() - self.last_save < 60 * self.save_every_minutes:
            return False
        return True

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def stop_everywhere(self, world: World) -> bool:
        """Whether to stop now; every rank stops at the same step, whichever of them got the signal."""
        return bool(world.mean(torch.tensor(float(self.should_stop), device=world.device)) > 0)

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl in the run folder, one JSON object a line (appended, so a resumed run continues it),
    and TensorBoard's event files beside it when tensorboard is installed. Only rank 0 writes."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.board = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(os.fspath(run_dir / "tensorboard"))
            except ImportError:
                pass

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(
                json.dumps({"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}})
                + "\n"
            )
        if self.board is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.board.add_scalar(name, value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class LogWindow:
    """Per-step values averaged over the steps since the last `means()`: a log window, including the short one a
    resumed run starts with (its steps only, not log_every of them)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.monotonic()

    def per_second(self, name: str) -> float:
        """The window's total of `name` over its wall-clock seconds so far."""
        return self.sums.get(name, 0.0) / max(time.monotonic() - self.started, 1e-9)

    def add(self, values: dict[str, float]) -> None:
        """One step's values."""
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def means(self) -> dict[str, float]:
        """The window's means; the next window starts empty."""
        means = {name: total / max(self.steps, 1) for name, total in self.sums.items()}
        self.sums, self.steps, self.started = {}, 0, time.monotonic()
        return means


def shows_progress(config: RunConfig, world: World) -> bool:
    """Whether this process shows progress bars: the main rank, when the config asks."""
    return config.progress and world.is_main


def end_run(name: str, output: Path, step: int, skipped: SkippedExamples, metrics: MetricsLog, world: World) -> None:
    """A recipe's last words (rank 0: what was skipped, where the output is) and the release of its log and
    process group."""
    if world.is_main:
        if len(skipped):
            print(f"skipped examples: {skipped}", flush=True)
        print(f"{name}: {output} (step {step})", flush=True)
    metrics.close()
    world.close()


def next_batch(data: Iterator, loader: Iterable) -> tuple[Any, Iterator]:
    """The next micro-batch and the iterator to go on with; past the end of an epoch, the next epoch's first."""
    try:
        return next(data), data
    except StopIteration:
        data = iter(loader)
        return next(data), data


class Recipe(Protocol):
    """What `auralm train` runs (torchtune's recipe interface). Recipes share code by owning helpers, never by
    inheriting from each other."""

    def setup(self) -> None:
        """Load data and models, build the optimizer, and resume from the latest checkpoint when asked."""

    def train(self) -> None:
        """Step until max_steps, the time limit or a signal, saving checkpoints on the way."""

    def save_checkpoint(self) -> None:
        """Everything a resumed run needs, and the outputs as they stand."""

    def cleanup(self) -> None:
        """Report and release what setup took, whatever happened in train."""


def run_recipe(recipe: Recipe) -> int:
    """setup, train, cleanup (whatever happens in training): a recipe's whole life."""
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    return 0


def start_run(config: RunConfig, resume: bool) -> tuple[World, Path, Checkpoints]:
    """A recipe's first steps: CPU threads, the process group, the run folder and its checkpoints; a run
    folder that already holds checkpoints is only gone on with --resume, never overwritten."""
    if config.threads:
        torch.set_num_threads(config.threads)
    world = init_distributed(config.device)
    run_dir = Path(config.output_dir)
    if world.is_main:
        hold_run_folder(run_dir)
    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.keep_checkpoints)
    if not resume and checkpoints.steps():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to go on, or choose another output_dir")
    return world, run_dir, checkpoints


_held_folders: dict[Path, Any] = {}  # run folder → its open lock file, held until the process ends


def hold_run_folder(run_dir: Path) -> None:
    """Lock `run_dir` for this process, so a second run started on it (a `--resume` typed twice) stops at once
    instead of writing over the first one's checkpoints. The kernel drops the lock when the process ends,
    however it ends, so a killed run leaves nothing stale behind."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _held_folders:
        return
    lock = open(key / ".lock", "a+")  # kept open: closing it would drop the lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ConfigError(
            f"{run_dir} is being trained by another process (pid {holder}); wait for it to end or stop it "
            "(it saves a checkpoint when stopped with Ctrl-C or SIGTERM), then --resume"
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    _held_folders[key] = lock
