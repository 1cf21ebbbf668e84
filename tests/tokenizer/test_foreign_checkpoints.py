"""Ichigo / WhisperSpeech / Lightning checkpoint files, written as those projects write them
(random weights, tiny Whisper dims), load into SpeechTokenizer and compute what a by-hand
reading of their state dict computes."""

import dataclasses
import math
import os
import sys
import types
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from auralm.checkpoints import CheckpointError
from auralm.tokenizer import SpeechTokenizer, load_audio
from auralm.tokenizer.backbone import log_mel_for_tokens
from tests.conftest import DATA, TINY_CONFIG


@dataclasses.dataclass
class VQConfig:  # stands for Ichigo's config.vq_config.VQConfig, a class auralm never imports
    init_std: float = 1.5
    query_mult: float = 2.0
    rope: bool = True
    mask_embs: bool = True
    downsample_conv: bool = False
    downsample_mean: bool = True
    codebook_dim: int = 16


VQConfig.__module__, VQConfig.__qualname__ = "config.vq_config", "VQConfig"


def ichigo_state_dict(tokenizer: SpeechTokenizer) -> dict[str, torch.Tensor]:
    """The keys Ichigo saves (older vector-quantize-pytorch: projections under rq.layers.0)."""
    state = {}
    for key, value in tokenizer.bottleneck.state_dict().items():
        state[key.replace("rq.project_", "rq.layers.0.project_")] = value.clone()
    state["_codebook_usage"] = torch.rand(TINY_CONFIG.n_codes + 1)
    state["val_true"], state["val_total"] = torch.zeros(1), torch.zeros(1)
    return state


def ichigo_args(vq_config: VQConfig) -> dict:
    return dict(
        vq_codes=TINY_CONFIG.n_codes, q_depth=1, depth=1, n_head=2, head_width=32, ffn_mult=4, codebook_dim=16,
        threshold_ema_dead_code=2, use_cosine_sim=True, kl_loss_mul=1, downsample=2, no_quantize=False,
        whisper_model_name="tiny-random", config=vq_config,
    )  # fmt: skip


def save_pickle(path, content) -> None:
    """torch.save, as those projects do, with VQConfig's module importable only while saving."""
    package, module = types.ModuleType("config"), types.ModuleType("config.vq_config")
    module.VQConfig = VQConfig
    with mock.patch.dict(sys.modules, {"config": package, "config.vq_config": module}):
        torch.save(content, path)


# ---- the state dict read by hand -----------------------------------------------------


def by_hand_codes(state: dict, frames: torch.Tensor) -> torch.Tensor:
    x = frames.view(frames.shape[0], 750, 2, -1).mean(2)
    h = F.layer_norm(x, (64,), state["mlp_ln.weight"], state["mlp_ln.bias"])
    h = F.linear(
        F.gelu(F.linear(h, state["mlp.0.weight"], state["mlp.0.bias"])), state["mlp.2.weight"], state["mlp.2.bias"]
    )
    z = F.linear(x + h, state["rq.layers.0.project_in.weight"], state["rq.layers.0.project_in.bias"])
    codebook = state["rq.layers.0._codebook.embed"][0]  # all rows, the mask code's too, as stored
    return (F.normalize(z, dim=-1, eps=1e-6) @ codebook.T).argmax(-1)


def by_hand_features(state: dict, codes: torch.Tensor, query_mult: float, pad_code: int) -> torch.Tensor:
    B, T = codes.shape
    padded = torch.full((B, 750), pad_code, dtype=torch.long)
    padded[:, :T] = codes
    x = F.linear(
        state["rq.layers.0._codebook.embed"][0, padded],
        state["rq.layers.0.project_out.weight"],
        state["rq.layers.0.project_out.bias"],
    )
    x = x.repeat_interleave(2, dim=1) + state["positional_embedding.weight"]
    p = "_out_blocks.0."
    h = F.layer_norm(x, (64,), state[p + "attn_ln.weight"], state[p + "attn_ln.bias"])
    q = F.linear(h, state[p + "attn.query.weight"], state[p + "attn.query.bias"]).view(B, 1500, 2, 32)
    k = F.linear(h, state[p + "attn.key.weight"]).view(B, 1500, 2, 32)
    v = F.linear(h, state[p + "attn.value.weight"], state[p + "attn.value.bias"]).view(B, 1500, 2, 32)
    angle = torch.arange(1500.0)[:, None] * state[p + "attn.rotary.inv_freq"][None]
    cos, sin = torch.cat([angle, angle], -1).cos()[:, None], torch.cat([angle, angle], -1).sin()[:, None]

    def rope(t):
        return t * cos + torch.cat([-t[..., 16:], t[..., :16]], -1) * sin

    q, k = rope(q), rope(k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * (query_mult * 8 / math.sqrt(32)) / math.sqrt(32)
    attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, 1500, 64)
    x = x + F.linear(attended, state[p + "attn.out.weight"], state[p + "attn.out.bias"])
    h = F.layer_norm(x, (64,), state[p + "mlp_ln.weight"], state[p + "mlp_ln.bias"])
    x = x + F.linear(
        F.gelu(F.linear(h, state[p + "mlp.0.weight"], state[p + "mlp.0.bias"])),
        state[p + "mlp.2.weight"],
        state[p + "mlp.2.bias"],
    )
    return F.layer_norm(x, (64,), state["ln_post.weight"], state["ln_post.bias"])


def assert_matches_by_hand(loaded: SpeechTokenizer, state: dict, query_mult: float, pad_code: int):
    audio = load_audio(DATA / "en_16k.wav")
    mel = log_mel_for_tokens(audio, 80)[None]
    with torch.no_grad():
        frames = loaded.whisper.encoder(mel)
        expected = by_hand_codes(state, frames)[0, : math.ceil(len(audio) / 640)]
        codes = loaded.encode(audio)
        assert torch.equal(codes, expected)
        features = loaded.bottleneck.dequantize(codes[None])
        torch.testing.assert_close(
            features, by_hand_features(state, codes[None], query_mult, pad_code), atol=1e-4, rtol=1e-4
        )
        tokens = torch.tensor([[50257, 50362, 464, 2068]])  # <|startoftranscript|><|notimestamps|> The quick
        torch.testing.assert_close(
            loaded.whisper.decoder(tokens, features),
            loaded.whisper.decoder(tokens, by_hand_features(state, codes[None], query_mult, pad_code)),
            atol=1e-3,
            rtol=1e-3,
        )


# ---- the formats ---------------------------------------------------------------------


def test_ichigo_pth(tmp_path, tiny_tokenizer, tiny_whisper):
    state = ichigo_state_dict(tiny_tokenizer)
    path = tmp_path / "ichigo-whisper.pth"
    save_pickle(path, {"config": ichigo_args(VQConfig()), "state_dict": state})
    loaded = SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
    assert (loaded.config.n_codes, loaded.config.query_mult, loaded.config.rope) == (TINY_CONFIG.n_codes, 2.0, True)
    assert loaded.tokenizer_hash == tiny_tokenizer.tokenizer_hash
    assert_matches_by_hand(loaded, state, query_mult=2.0, pad_code=TINY_CONFIG.mask_code)


def test_lightning_ckpt(tmp_path, tiny_tokenizer, tiny_whisper):
    state = ichigo_state_dict(tiny_tokenizer)
    path = tmp_path / "epoch=3-step=1000.ckpt"
    hyper = {"vq_config": VQConfig(), "n_head": 2, "downsample": 2, "whisper_model_name": "tiny-random"}
    save_pickle(path, {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "hyper_parameters": hyper,
        "optimizer_states": [{"state": {}, "param_groups": []}],
        "pytorch-lightning_version": "2.4.0",
    })  # fmt: skip
    loaded = SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
    assert loaded.tokenizer_hash == tiny_tokenizer.tokenizer_hash
    assert_matches_by_hand(loaded, state, query_mult=2.0, pad_code=TINY_CONFIG.mask_code)


def test_whisperspeech_model_without_mask_code_and_old_key_names(tmp_path, tiny_tokenizer, tiny_whisper):
    state = {k.replace("_out_blocks.", "out_blocks."): v for k, v in ichigo_state_dict(tiny_tokenizer).items()}
    for name in ("embed", "embed_avg", "cluster_size"):  # a codebook of exactly vq_codes, no mask code
        key = f"rq.layers.0._codebook.{name}"
        state[key] = state[key][:, : TINY_CONFIG.n_codes]
    del state["_codebook_usage"], state["val_true"], state["val_total"]
    args = {k: v for k, v in ichigo_args(VQConfig()).items() if k not in ("config", "no_quantize")}
    tunables = dataclasses.asdict(VQConfig(mask_embs=False))
    path = tmp_path / "whisper-vq-stoks.model"
    save_pickle(path, {"config": args, "tunables": tunables, "state_dict": state})
    loaded = SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
    assert loaded.config.n_codes == TINY_CONFIG.n_codes
    hand_state = {k.replace("out_blocks.", "_out_blocks."): v for k, v in state.items()}
    assert_matches_by_hand(loaded, hand_state, query_mult=2.0, pad_code=0)


def test_backbone_named_in_the_checkpoint_must_exist(tmp_path, tiny_tokenizer):
    path = tmp_path / "ichigo.pth"
    save_pickle(path, {"config": ichigo_args(VQConfig()), "state_dict": ichigo_state_dict(tiny_tokenizer)})
    with pytest.raises(CheckpointError, match="tiny-random: no such file, folder or Whisper name"):
        SpeechTokenizer.from_pretrained(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_read_without_running_it(tmp_path, tiny_tokenizer, tiny_whisper):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    save_pickle(path, {"config": {"payload": _RunsCode(str(marker))}, "state_dict": ichigo_state_dict(tiny_tokenizer)})
    with pytest.raises(CheckpointError, match=r"refused: the file asks to run code \(posix.mkdir\)"):
        SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
    assert not marker.exists()


def test_files_that_are_not_tokenizer_checkpoints(tmp_path, tiny_whisper):
    path = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no state_dict"):
        SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a WhisperVQ checkpoint"):
        SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
    torch.save({"dims": dataclasses.asdict(tiny_whisper.dims), "model_state_dict": {}}, path)  # a backbone
    with pytest.raises(CheckpointError, match="no state_dict"):
        SpeechTokenizer.from_pretrained(path, whisper=tiny_whisper)
