"""Read torch checkpoints that hold objects of classes we do not have, without running their code.

Ichigo and WhisperSpeech pickle config objects (`VQConfig`, Lightning hyper-parameters)
next to their tensors. Full unpickling would import and run whatever the file names.
Instead, every class the file names outside torch's safe set is replaced by a
`ForeignObject` stand-in of the same name, built by our own code from the file's
data, and the file goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from auralm.checkpoints.errors import CheckpointError


class ForeignObject:
    """A stand-in for an object of a foreign class: its constructor arguments and state, as data."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"ForeignObject({type(self).__module__}.{type(self).__qualname__}, {self.__dict__})"


def load_foreign_torch_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True, every unknown class standing in as a ForeignObject."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # torch raises many types for files that are not checkpoints
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    stand_ins = [_stand_in(name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's unpickler raises many types
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(e))  # torch blocks os, subprocess, builtins, …
        if blocked:
            raise CheckpointError(
                f"{path}: refused: the file asks to run code ({blocked[1]}); it is not a checkpoint"
            ) from e
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


def _stand_in(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name, (ForeignObject,), {"__module__": module, "__qualname__": name})
