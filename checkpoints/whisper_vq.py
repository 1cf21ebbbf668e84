"""Converter for Ichigo and WhisperSpeech quantizer checkpoints ("WhisperVQ").

Files: Ichigo `.pth` and WhisperSpeech `.model` hold `dict(config, tunables?, state_dict)`;
Lightning `.ckpt` files hold `state_dict` with a `model.` prefix and `hyper_parameters`.
They are read with `load_foreign_torch_file` (no code from the file runs). The result is
plain data: TokenizerConfig fields and a state dict under auralm's keys, which are
vector-quantize-pytorch's current ones:
  - `rq.layers.0.project_in|out` (older library versions) → `rq.project_in|out`;
  - `out_blocks.` (older WhisperSpeech) → `_out_blocks.`;
  - a codebook without a mask code gets one: a copy of code 0, because those models pad
    with code 0, so decoding stays what it was;
  - training bookkeeping (`_codebook_usage`, `val_true`, `val_total`) is dropped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from auralm.checkpoints.errors import CheckpointError
from auralm.checkpoints.foreign_pickle import ForeignObject, load_foreign_torch_file

TRAINING_BOOKKEEPING = ("_codebook_usage", "val_true", "val_total")
CODEBOOK = "rq.layers.0._codebook."


def read_whisper_vq(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(TokenizerConfig fields, state dict) from an Ichigo / WhisperSpeech / Lightning checkpoint file."""
    path = Path(path)
    content = load_foreign_torch_file(path)
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a speech tokenizer checkpoint (no state_dict)")
    state = _rename_keys(content["state_dict"])
    if "mlp.0.weight" not in state or f"{CODEBOOK}embed" not in state:
        raise CheckpointError(f"{path}: not a WhisperVQ checkpoint (no mlp.0 or codebook weights)")
    settings = _settings(content)
    try:
        fields = _config_fields(state, settings)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot tell the model's shape: {e}") from e
    if not settings.get("mask_embs", False):
        _add_mask_code(state)
    return fields, state


def _rename_keys(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    if any(k.startswith("model.") for k in state_dict):  # Lightning wraps the model as `model`
        state_dict = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    renamed = {}
    for key, value in state_dict.items():
        if key in TRAINING_BOOKKEEPING:
            continue
        key = re.sub(r"^rq\.layers\.0\.(project_in|project_out)\.", r"rq.\1.", key)
        key = re.sub(r"^out_blocks\.", "_out_blocks.", key)
        renamed[key] = value
    return renamed


def _settings(content: dict[str, Any]) -> dict[str, Any]:
    """Every named setting the file carries, flattened: constructor args, their nested config
    object, WhisperSpeech tunables, Lightning hyper-parameters (first found wins)."""
    settings: dict[str, Any] = {}

    def collect(source: Any, depth: int = 0) -> None:
        if isinstance(source, ForeignObject):
            source = {k: v for k, v in vars(source).items() if k not in ("args", "kwargs")}
        if not isinstance(source, dict) or depth > 3:
            return
        for key, value in source.items():
            if isinstance(value, (dict, ForeignObject)):
                collect(value, depth + 1)
            else:
                settings.setdefault(str(key), value)

    for part in ("config", "tunables", "hyper_parameters"):
        collect(content.get(part))
    return settings


def _config_fields(state: dict[str, torch.Tensor], settings: dict[str, Any]) -> dict[str, Any]:
    n_state = state["mlp.0.weight"].shape[1]
    codebook_size, codebook_dim = state[f"{CODEBOOK}embed"].shape[1:]
    rope = "_out_blocks.0.attn.rotary.inv_freq" in state
    if "n_head" in settings:
        n_head = int(settings["n_head"])
    elif rope:
        n_head = n_state // (2 * state["_out_blocks.0.attn.rotary.inv_freq"].shape[0])
    else:
        raise ValueError("no n_head setting and no rotary embedding to infer it from")
    if settings.get("downsample_conv"):
        raise ValueError("convolutional downsampling (downsample_conv) is not supported")
    downsample = int(settings.get("downsample", 1))
    return {
        "whisper": settings.get("whisper_model_name"),
        "n_state": n_state,
        "n_head": n_head,
        "n_codes": codebook_size - 1 if settings.get("mask_embs", False) else codebook_size,
        "codebook_dim": codebook_dim,
        "downsample": downsample,
        "pooling": "mean" if settings.get("downsample_mean", False) or downsample == 1 else "stride",
        "depth": len({k.split(".")[1] for k in state if k.startswith("_out_blocks.")}),
        "ffn_mult": state["mlp.0.weight"].shape[0] // n_state,
        "query_mult": float(settings.get("query_mult", 1)),
        "rope": rope,
    }


def _add_mask_code(state: dict[str, torch.Tensor]) -> None:
    """Append a mask code equal to code 0 (what models without one pad with)."""
    for name in ("embed", "embed_avg", "cluster_size"):
        key = CODEBOOK + name
        if key in state:
            state[key] = torch.cat([state[key], state[key][:, :1]], dim=1)
