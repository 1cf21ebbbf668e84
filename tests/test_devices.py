"""One default-device rule: CUDA when present, else CPU; `auto` and None name it."""

import torch

from auralm.devices import AUTO, default_device, resolve_device


def test_auto_and_none_are_cuda_when_present_else_cpu():
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert default_device() == resolve_device(AUTO) == resolve_device(None) == expected


def test_a_named_device_is_taken_as_named():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # checked where it is used, not here
