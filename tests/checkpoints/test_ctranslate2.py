"""The CTranslate2 reader on files written to its format: dtypes, aliases, parts, and broken files."""

import pytest
import torch

from auralm.checkpoints import CheckpointError
from auralm.checkpoints.ctranslate2 import model_bin_parts, read_model_bin
from tests.checkpoints.ct2_writer import DTYPE_IDS, encode_model_bin


def variables():
    g = torch.Generator().manual_seed(0)
    out = {f"m/{dtype}".replace("torch.", ""): torch.randn(3, 5, generator=g).to(dtype) for dtype in DTYPE_IDS}
    out["scalar"] = torch.tensor(7, dtype=torch.int16)
    out["empty"] = torch.zeros(0, 4)
    return out


def test_every_dtype_and_alias_round_trips(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(encode_model_bin("TestSpec", variables(), {"alias": "m/float16"}))
    model = read_model_bin([path])
    assert model.spec == "TestSpec"
    for name, tensor in variables().items():
        assert model.variables[name].dtype == tensor.dtype
        assert torch.equal(model.variables[name], tensor), name
    assert torch.equal(model.variables["alias"], variables()["m/float16"])


def test_parts_concatenate_in_numeric_order(tmp_path):
    data = encode_model_bin("TestSpec", variables())
    size = len(data) // 11 + 1
    for i in range(11):  # part10 and part11 must come after part9, not after part1
        (tmp_path / f"model.bin.part{i + 1}").write_bytes(data[i * size : (i + 1) * size])
    (tmp_path / "model.bin.part1.bak").write_bytes(b"ignored")
    parts = model_bin_parts(tmp_path)
    assert [p.name for p in parts] == [f"model.bin.part{i + 1}" for i in range(11)]
    assert torch.equal(read_model_bin(parts).variables["m/float32"], variables()["m/float32"])


def test_folder_without_a_model(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: no model.bin"):
        model_bin_parts(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "truncated or corrupt"),
        (lambda data: data + b"\0\0\0\0", "unexpected bytes"),
        (lambda data: b"\x05" + data[1:], "binary version 5"),
        (lambda data: data.replace(bytes([DTYPE_IDS[torch.float32]]) + b"\x3c\0\0\0", b"\x09\x3c\0\0\0", 1), "dtype 9"),
    ],
    ids=["truncated", "trailing", "version", "dtype"],
)
def test_broken_files_name_the_file(tmp_path, damage, message):
    path = tmp_path / "model.bin"
    path.write_bytes(damage(encode_model_bin("TestSpec", variables())))
    with pytest.raises(CheckpointError, match=message) as raised:
        read_model_bin([path])
    assert str(raised.value).startswith(str(path))
