"""The device auralm runs on when none is named, one rule for every command and API: CUDA when present, else CPU.

`auto` names this rule wherever a device is taken (`--device auto`, the default of every command;
`SpeechChat.from_pretrained(device="auto")` or None). torch is imported only when a device is resolved, so the
command line can state the rule in its help without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"
RULE = "CUDA when present, else CPU"  # what AUTO means, in words (for help texts)


def default_device() -> torch.device:
    """The device of AUTO: the first CUDA GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or "auto": `default_device()`; any other name (cpu, cuda, cuda:N, mps) or device as torch reads it."""
    import torch

    if device is None or (isinstance(device, str) and device == AUTO):
        return default_device()
    return torch.device(device)


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU's model and the threads torch uses (for reports)."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU {model}, {threads} thread{'s' * (threads != 1)}"
