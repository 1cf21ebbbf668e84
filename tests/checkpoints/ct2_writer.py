"""Test-side writer of CTranslate2 `model.bin` files (format in auralm.checkpoints.ctranslate2),
and the inverse of the Whisper converter, so tiny random models can travel through the real reader."""

import struct
from pathlib import Path

import torch
from whisper.model import Whisper

DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}


def encode_model_bin(
    spec: str, variables: dict[str, torch.Tensor], aliases: dict[str, str] | None = None, version: int = 6
) -> bytes:
    aliases = aliases or {}

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", version), string(spec), struct.pack("<I", 1), struct.pack("<I", len(variables))]
    for name, tensor in variables.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out += [string(name), struct.pack("<B", tensor.dim()), *(struct.pack("<I", d) for d in tensor.shape)]
        out += [struct.pack("<B", DTYPE_IDS[tensor.dtype]), struct.pack("<I", len(raw)), raw]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [string(alias), string(target)]
    return b"".join(out)


def whisper_to_ct2_variables(model: Whisper, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """What CTranslate2's converter makes of an openai-whisper model: fused projections, zero key biases."""
    sd = {k: v.to(dtype) for k, v in model.state_dict().items()}
    v: dict[str, torch.Tensor] = {}

    def linear(dst, src):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst, srcs):
        v[f"{dst}/weight"] = torch.cat([sd[f"{s}.weight"] for s in srcs])
        v[f"{dst}/bias"] = torch.cat(
            [sd[f"{s}.bias"] if f"{s}.bias" in sd else torch.zeros_like(sd[f"{s}.weight"][:, 0]) for s in srcs]
        )

    def block(dst, src, cross):
        norm(f"{dst}/self_attention/layer_norm", f"{src}.attn_ln")
        fused(f"{dst}/self_attention/linear_0", [f"{src}.attn.query", f"{src}.attn.key", f"{src}.attn.value"])
        linear(f"{dst}/self_attention/linear_1", f"{src}.attn.out")
        if cross:
            norm(f"{dst}/attention/layer_norm", f"{src}.cross_attn_ln")
            linear(f"{dst}/attention/linear_0", f"{src}.cross_attn.query")
            fused(f"{dst}/attention/linear_1", [f"{src}.cross_attn.key", f"{src}.cross_attn.value"])
            linear(f"{dst}/attention/linear_2", f"{src}.cross_attn.out")
        norm(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")
        linear(f"{dst}/ffn/linear_0", f"{src}.mlp.0")
        linear(f"{dst}/ffn/linear_1", f"{src}.mlp.2")

    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    v["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]
    v["encoder/num_heads"] = torch.tensor(model.dims.n_audio_head, dtype=torch.int16)
    for i in range(model.dims.n_audio_layer):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    norm("encoder/layer_norm", "encoder.ln_post")
    v["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    v["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    v["decoder/num_heads"] = torch.tensor(model.dims.n_text_head, dtype=torch.int16)
    for i in range(model.dims.n_text_layer):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    norm("decoder/layer_norm", "decoder.ln")
    return v


def write_whisper_ct2(model: Whisper, folder: Path, dtype: torch.dtype = torch.float16, parts: int = 1) -> Path:
    data = encode_model_bin(
        "WhisperSpec",
        whisper_to_ct2_variables(model, dtype),
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    folder.mkdir(parents=True, exist_ok=True)
    if parts == 1:
        (folder / "model.bin").write_bytes(data)
    else:
        size = -(-len(data) // parts)
        for i in range(parts):
            (folder / f"model.bin.part{i + 1}").write_bytes(data[i * size : (i + 1) * size])
    return folder
