"""What the recipe tests share: the `auralm` command, and a tiny random Whisper saved as openai-whisper saves one."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from whisper.model import Whisper

from tests.conftest import TINY_WHISPER, randomize

AURALM = [sys.executable, "-m", "auralm"]


@pytest.fixture(scope="session")
def tiny_whisper_file(tmp_path_factory) -> Path:
    model = Whisper(TINY_WHISPER)
    randomize(model, seed=0)
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dataclasses.asdict(TINY_WHISPER), "model_state_dict": model.state_dict()}, path)
    return path
