"""Codes identical to Ichigo's own: a checkpoint made and saved by the `ichigo-whisper` package (a
test-only reference, installed without its pinned dependencies), tokenized by it and by auralm."""

import pytest
import torch
from ichigo_whisper.config.vq_config import VQConfig
from ichigo_whisper.models.vq_transformer import RQBottleneckTransformer

from auralm.tokenizer import SpeechTokenizer, load_audio
from tests.conftest import DATA, ENGLISH_CLIPS, TINY_CONFIG


def ichigo_model(whisper, unit_rows: bool) -> RQBottleneckTransformer:
    """Ichigo's bottleneck at tiny width (2 heads × 32 = the tiny Whisper's 64), as its factory builds one.
    Its EMA training keeps unit-norm codebook rows; `unit_rows=False` stretches them, as a codebook
    trained otherwise (or edited) may hold them."""
    torch.manual_seed(0)
    model = RQBottleneckTransformer(
        vq_codes=TINY_CONFIG.n_codes, q_depth=1, depth=1, n_head=2, head_width=32, ffn_mult=4,
        codebook_dim=TINY_CONFIG.codebook_dim, threshold_ema_dead_code=0, use_cosine_sim=True, downsample=2,
        whisper_model_name="tiny-random", config=VQConfig(),
    )  # fmt: skip
    model.whmodel = [whisper]  # instead of openai-whisper's download
    model.eval()
    embed = model.state_dict()["rq.layers.0._codebook.embed"]  # (1, K + 1, dim), the module's storage
    with torch.no_grad():
        # Trained, the mask row lies near what quiet frames look like; here: the mean direction of the
        # codes a clip gets, so that speech frames too are sometimes nearest to it.
        codes = model.quantize(load_audio(DATA / ENGLISH_CLIPS[0])[None])[0]
        embed[0, TINY_CONFIG.mask_code] = torch.nn.functional.normalize(embed[0, codes].mean(0), dim=-1)
        if not unit_rows:
            embed.mul_(torch.empty(1, embed.shape[1], 1).uniform_(0.3, 3.0))
    return model


@pytest.mark.parametrize("unit_rows", [True, False], ids=["unit-rows", "stretched-rows"])
@torch.no_grad()
def test_codes_equal_ichigos_on_every_position(tmp_path, tiny_whisper, unit_rows):
    ichigo = ichigo_model(tiny_whisper, unit_rows)
    ichigo.save_model(tmp_path / "ichigo.pth")  # torch.save of its config (foreign classes) + state dict
    ours = SpeechTokenizer.from_pretrained(tmp_path / "ichigo.pth", whisper=tiny_whisper)
    total = mask_codes = 0
    for name in ENGLISH_CLIPS:
        audio = load_audio(DATA / name)
        theirs = ichigo.quantize(audio[None])[0]  # ⌊n / 640⌋ codes: a last partial code is dropped
        codes = ours.encode(audio)
        assert len(codes) == -(-len(audio) // 640) and len(theirs) == len(audio) // 640
        assert torch.equal(codes[: len(theirs)], theirs), name
        total += len(theirs)
        mask_codes += int((theirs == TINY_CONFIG.mask_code).sum())
    assert total > 300 and mask_codes > 0  # the mask code is among the codes compared
