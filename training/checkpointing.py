"""Training checkpoints that survive a kill at any moment: written to a temporary folder, then renamed.

    checkpoints = Checkpoints(run_dir / "checkpoints", keep=2)
    checkpoints.save(step, {"model": …, "optimizer": …, "rng": capture_rng(), …})
    state = checkpoints.latest()  # None when there is none

A checkpoint is a folder `step-00000100/` holding `state.pt`; the folder appears only once the file is
whole (rename is atomic), so a kill mid-save leaves the previous checkpoint as the latest. Loading
uses `torch.load(weights_only=True)`: a checkpoint holds tensors, numbers and strings, nothing that runs.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from auralm.errors import AuralmError

STATE_FILE = "state.pt"
PREFIX = "step-"


class Checkpoints:
    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory, self.keep = Path(directory), keep

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write `state` as the checkpoint of `step` (atomically), then drop all but the newest `keep`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{PREFIX}{step:08d}"
        partial = self.directory / f".partial-{final.name}"
        for stale in self.directory.glob(".partial-*"):  # what a kill during an earlier save left
            shutil.rmtree(stale)
        partial.mkdir()
        with open(partial / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(old)
        return final

    def steps(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file())

    def latest(self) -> dict[str, Any] | None:
        found = self.steps()
        if not found:
            return None
        try:
            return torch.load(found[-1] / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged file
            raise AuralmError(
                f"{found[-1] / STATE_FILE}: unreadable checkpoint ({e}); delete it to resume from the one before"
            ) from e


def capture_rng() -> dict[str, Any]:
    """The global random states a training step may draw from (Python's and torch's, CPU and CUDA)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
