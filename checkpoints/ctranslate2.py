"""Reader for CTranslate2 model files (`model.bin`, binary format version 6).

CTranslate2 is the runtime of faster-whisper; the offline Whisper weights on
this machine ship in its format. The file is a flat list of named arrays:

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables × (str name | u8 rank | rank × u32 dim | u8 dtype | u32 n_bytes | bytes)
    u32 n_aliases | n_aliases × (str alias | str target)

where `str` is a u16 length (counting a trailing NUL) followed by UTF-8 bytes
and the NUL. Everything is little-endian. Large models are sometimes shipped
split into `model.bin.part1`, `model.bin.part2`, … that concatenate to the file.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import NamedTuple

import torch

from auralm.checkpoints.errors import CheckpointError

SUPPORTED_VERSION = 6

# CTranslate2's DataType enum, in its order.
_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}


class CTranslate2Model(NamedTuple):
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, torch.Tensor]  # aliases resolved: every name maps to its tensor


def model_bin_parts(model_dir: str | Path) -> list[Path]:
    """The file(s) holding a CTranslate2 model folder's `model.bin`, in order."""
    model_dir = Path(model_dir)
    whole = model_dir / "model.bin"
    if whole.is_file():
        return [whole]
    parts = [p for p in model_dir.glob("model.bin.part*") if re.fullmatch(r"model\.bin\.part\d+", p.name)]
    if not parts:
        raise CheckpointError(
            f"{model_dir}: no model.bin or model.bin.part1, … in this folder; is it a CTranslate2 model?"
        )
    return sorted(parts, key=lambda p: int(p.name.removeprefix("model.bin.part")))


def read_model_bin(parts: list[Path]) -> CTranslate2Model:
    """Read a `model.bin` given as one file or as its parts in order. Tensors keep the stored dtype."""
    name = " + ".join(str(p) for p in parts)
    data = memoryview(b"".join(p.read_bytes() for p in parts))
    reader = _Reader(data, name)
    try:
        version = reader.unpack("<I")
        if version != SUPPORTED_VERSION:
            raise CheckpointError(
                f"{name}: CTranslate2 binary version {version}; only version {SUPPORTED_VERSION} is supported"
            )
        spec = reader.string()
        revision = reader.unpack("<I")
        variables = {}
        for _ in range(reader.unpack("<I")):
            key = reader.string()
            shape = [reader.unpack("<I") for _ in range(reader.unpack("<B"))]
            dtype_id = reader.unpack("<B")
            if dtype_id not in _DTYPES:
                raise CheckpointError(f"{name}: variable {key!r} has unsupported CTranslate2 dtype {dtype_id}")
            raw = bytearray(reader.take(reader.unpack("<I")))
            flat = torch.frombuffer(raw, dtype=_DTYPES[dtype_id]) if raw else torch.empty(0, dtype=_DTYPES[dtype_id])
            variables[key] = flat.reshape(shape)
        for _ in range(reader.unpack("<I")):
            alias, target = reader.string(), reader.string()
            variables[alias] = variables[target]
    except (struct.error, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"{name}: truncated or corrupt CTranslate2 model file ({e}); reinstall the weights package"
        ) from e
    if reader.offset != len(data):
        raise CheckpointError(
            f"{name}: {len(data) - reader.offset} unexpected bytes after the model; are the parts complete and in order?"
        )
    return CTranslate2Model(spec, revision, variables)


class _Reader:
    def __init__(self, data: memoryview, name: str):
        self.data, self.name, self.offset = data, name, 0

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.data):
            raise struct.error(f"wanted {n} bytes at offset {self.offset}, file has {len(self.data)}")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.unpack("<H"))).rstrip(b"\0").decode("utf-8")
