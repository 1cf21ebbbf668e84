"""The README's Python blocks run as written, in order, in a folder holding the files they name
(a random-weight Ichigo checkpoint on the real tiny.en; the shipped speech models)."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from ichigo_whisper.config.vq_config import VQConfig
from ichigo_whisper.models.vq_transformer import RQBottleneckTransformer

from tests.conftest import DATA

pytestmark = pytest.mark.integration
README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_readme_python_runs_as_written(tmp_path, monkeypatch):
    for name, fixture in [("talk.mp3", "en_stereo_44k.mp3"), ("a.wav", "en_16k.wav"), ("b.mp3", "en_stereo_44k.mp3")]:
        shutil.copy(DATA / fixture, tmp_path / name)
    shutil.copy(DATA / "en_8k.wav", tmp_path / "clip.wav")
    torch.manual_seed(0)  # an Ichigo checkpoint as Ichigo's code saves one: tiny.en width, 512 codes
    RQBottleneckTransformer(
        vq_codes=512, q_depth=1, depth=1, n_head=6, head_width=64, ffn_mult=4, codebook_dim=64,
        threshold_ema_dead_code=0, use_cosine_sim=True, downsample=2, whisper_model_name="tiny.en", config=VQConfig(),
    ).save_model(tmp_path / "ichigo-whisper.pth")  # fmt: skip
    monkeypatch.chdir(tmp_path)

    blocks = python_blocks()
    assert len(blocks) == 3
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)

    assert [len(c) for c in namespace["codes"]] == [namespace["speech"].num_codes(len(namespace["load_audio"](f)))
                                                     for f in ("a.wav", "b.mp3")]  # fmt: skip
    assert (tmp_path / "my-tokenizer" / "config.json").is_file()
    reply, clip_codes = namespace["reply"], namespace["clip_codes"]
    assert reply.finish_reason in ("stop", "length") and reply.prompt_tokens > len(clip_codes)
    assert namespace["chat"].speech_tokenizer.to_string(clip_codes) in namespace["prompt"]
