import json
import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. It must be set before
# any kernel module is imported: @triton.jit reads it when it decorates.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA = Path(__file__).parent / "data"
TEXTS = json.loads((DATA / "texts.json").read_text())
ENGLISH_CLIPS = sorted(name for name in TEXTS if name.startswith("en_"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def whisper_tiny_en():
    from auralm.checkpoints import load_whisper

    return load_whisper("tiny.en")


@pytest.fixture(scope="session")
def whisper_base():
    from auralm.checkpoints import load_whisper

    return load_whisper("base")
