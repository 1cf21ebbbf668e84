import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from whisper.model import ModelDimensions, Whisper

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. It must be set before
# any kernel module is imported: @triton.jit reads it when it decorates.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from auralm.tokenizer import SpeechTokenizer, TokenizerConfig

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


# Whisper's real audio geometry (80 mels, 1500 frames) at toy width; a short text context keeps
# decoding of random weights quick.
TINY_WHISPER = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
    n_vocab=51864, n_text_ctx=24, n_text_state=64, n_text_head=2, n_text_layer=1,
)  # fmt: skip
TINY_CONFIG = TokenizerConfig(whisper="tiny-random", n_state=64, n_head=2, n_codes=64, codebook_dim=16)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (norms and biases too), so a mixed-up weight shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if p.dim() < 2 else p.shape[-1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=generator) * scale + (1.0 if name.endswith("ln.weight") else 0.0))


@pytest.fixture(scope="session")
def tiny_whisper() -> Whisper:
    model = Whisper(TINY_WHISPER)
    randomize(model, seed=0)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_whisper_file(tmp_path_factory) -> Path:
    """The tiny random Whisper of `tiny_whisper`, saved as openai-whisper saves one."""
    model = Whisper(TINY_WHISPER)
    randomize(model, seed=0)
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dataclasses.asdict(TINY_WHISPER), "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture
def tiny_tokenizer(tiny_whisper) -> SpeechTokenizer:
    torch.manual_seed(1)  # ResidualVQ draws its unit-norm codebook from the global generator
    tokenizer = SpeechTokenizer(TINY_CONFIG, tiny_whisper)
    randomize(tokenizer.bottleneck, seed=1)
    return tokenizer.eval()


@pytest.fixture
def tiny_chat(tiny_tokenizer):
    """A SpeechChat on a tiny random Llama and speech tokenizer: long replies, no early end of text."""
    from auralm.lm import SpeechChat, add_sound_tokens
    from tests.lm.conftest import tiny_llama, tiny_text_tokenizer

    model, text = tiny_llama(tied=True, initializer_range=1.0), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    return SpeechChat(model, text, tiny_tokenizer)


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory):
    """A tokenizer on the real tiny.en backbone with a random bottleneck, saved as auralm saves it."""
    from auralm.checkpoints import load_whisper

    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(
        TokenizerConfig(whisper="tiny.en", n_state=384, n_head=6, n_codes=512), load_whisper("tiny.en")
    )
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("tokenizer") / "random-tiny-en")
