"""Whisper backbones as openai-whisper `Whisper` models, from any offline source.

`load_whisper(source)` takes, in this order of lookup:
  - a path: an openai-whisper `.pt` checkpoint, or a CTranslate2 Whisper folder
    (`model.bin`, or `model.bin.part1`, `part2`, … that concatenate to it);
  - a name in the local openai-whisper cache (`~/.cache/whisper/<name>.pt`);
  - a name in `registry.WHISPER_MODELS`, resolved to an installed weights package.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from auralm.checkpoints.ctranslate2 import CTranslate2Model, model_bin_parts, read_model_bin
from auralm.checkpoints.errors import CheckpointError
from auralm.checkpoints.registry import WHISPER_MODELS


def load_whisper(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Whisper:
    """A frozen, eval-mode Whisper model from a path or a name (see the module docstring)."""
    path = Path(source)
    if path.is_dir():
        model = _from_ctranslate2(model_bin_parts(path))
    elif path.is_file():
        if path.name == "model.bin":
            model = _from_ctranslate2([path])
        else:
            model = _from_openai_checkpoint(path)
    elif _cached_openai_checkpoint(str(source)).is_file():
        model = _from_openai_checkpoint(_cached_openai_checkpoint(str(source)))
    elif str(source) in WHISPER_MODELS:
        model = _from_ctranslate2(WHISPER_MODELS[str(source)].paths())
    else:
        raise CheckpointError(
            f"{source}: no such file, folder or Whisper name; "
            f"known names: {', '.join(WHISPER_MODELS)} (see `auralm models`)"
        )
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def whisper_state_dict_from_ctranslate2(ct2: CTranslate2Model) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """Map a CTranslate2 `WhisperSpec` onto openai-whisper's dims and state-dict keys.

    CTranslate2 fuses attention projections (self-attention q|k|v, cross-attention k|v)
    and gives the bias-free Whisper key projection a zero bias; both are undone here.
    """
    if ct2.spec != "WhisperSpec":
        raise CheckpointError(f"CTranslate2 model is a {ct2.spec}, not a Whisper model")
    v = {name: _dequantize(ct2.variables, name) for name in ct2.variables if not name.endswith("_scale")}

    def count_layers(stack: str) -> int:
        return len({m[1] for name in v if (m := re.match(rf"{stack}/layer_(\d+)/", name))})

    dims = ModelDimensions(
        n_mels=v["encoder/conv1/weight"].shape[1],
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=v["encoder/conv1/weight"].shape[0],
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=count_layers("encoder"),
        n_vocab=v["decoder/embeddings/weight"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        n_text_state=v["decoder/embeddings/weight"].shape[1],
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=count_layers("decoder"),
    )

    sd: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]

    def layer_norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def fused(dsts: list[str], src: str) -> None:
        weights, biases = v[f"{src}/weight"].chunk(len(dsts)), v[f"{src}/bias"].chunk(len(dsts))
        for dst, weight, bias in zip(dsts, weights, biases, strict=True):
            sd[f"{dst}.weight"] = weight
            if dst.endswith(".key"):  # Whisper's key projection has no bias
                if bias.any():
                    raise CheckpointError(f"{src}: key bias is not zero; not a Whisper model")
            else:
                sd[f"{dst}.bias"] = bias

    def residual_block(dst: str, src: str, cross: bool) -> None:
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        fused([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        if cross:
            layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1")
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    for i in range(dims.n_audio_layer):
        residual_block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    layer_norm("encoder.ln_post", "encoder/layer_norm")

    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(dims.n_text_layer):
        residual_block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    layer_norm("decoder.ln", "decoder/layer_norm")
    return dims, sd


def _dequantize(variables: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """int8/int16 weights carry a per-row `<name>_scale` with quantized = round(weight × scale)."""
    tensor = variables[name]
    scale = variables.get(f"{name}_scale")
    if scale is None:
        return tensor
    return tensor.float() / scale.float().reshape(-1, *[1] * (tensor.dim() - 1))


def _from_ctranslate2(parts: list[Path]) -> Whisper:
    try:
        dims, state_dict = whisper_state_dict_from_ctranslate2(read_model_bin(parts))
    except KeyError as e:
        raise CheckpointError(f"{parts[0]}: CTranslate2 Whisper model lacks variable {e}") from e
    model = _build(dims, state_dict, parts[0])
    config = parts[0].parent / "config.json"
    if config.is_file():
        heads = json.loads(config.read_text()).get("alignment_heads")
        if heads:
            _set_alignment_heads(model, heads)
    return model


def _from_openai_checkpoint(path: Path) -> Whisper:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        state_dict = checkpoint["model_state_dict"]
    except Exception as e:  # any failure here means "not an openai-whisper checkpoint"
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint ({type(e).__name__}: {e})") from e
    model = _build(dims, state_dict, path)
    official_heads = getattr(whisper, "_ALIGNMENT_HEADS", {}).get(path.stem)
    if official_heads is not None:
        model.set_alignment_heads(official_heads)
    return model


def _build(dims: ModelDimensions, state_dict: dict[str, torch.Tensor], origin: Path) -> Whisper:
    model = Whisper(dims)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{origin}: weights do not fit Whisper {dims}: {e}") from e
    return model


def _set_alignment_heads(model: Whisper, heads: list[list[int]]) -> None:
    """Cross-attention heads used for word timestamps, given as [layer, head] pairs."""
    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


def _cached_openai_checkpoint(name: str) -> Path:
    cache = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "whisper" / f"{name}.pt"
