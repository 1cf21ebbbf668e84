"""Writing sound tokens per file, one line each, resumable after a kill.

Formats (one line per audio file):
    string  PATH<TAB><|sound_start|><|sound_0012|>…<|sound_end|>
    ids     PATH<TAB>12 7 431 …
    jsonl   {"path": PATH, "seconds": 3.1, "codes": [12, 7, 431, …]}
A rerun with the same output file skips the files already written there, and
drops a last line cut short by the kill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

import torch

from auralm.tokenizer import codes_to_string

FORMATS = ("string", "ids", "jsonl")


def format_line(path: Path, codes: torch.Tensor, seconds: float, fmt: str) -> str:
    if fmt == "string":
        return f"{path}\t{codes_to_string(codes)}"
    if fmt == "ids":
        return f"{path}\t{' '.join(map(str, codes.tolist()))}"
    return json.dumps({"path": str(path), "seconds": round(seconds, 3), "codes": codes.tolist()})


def line_path(line: str, fmt: str) -> str | None:
    """The audio path a complete output line is about, or None for a line that is not one."""
    if fmt != "jsonl":
        return line.split("\t", 1)[0] if "\t" in line else None
    try:
        return str(json.loads(line)["path"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def open_resumable(output: Path, fmt: str) -> tuple[TextIO, set[str]]:
    """Open `output` for appending; return it with the paths it already holds."""
    done: set[str] = set()
    if output.exists():
        text = output.read_text()
        if text and not text.endswith("\n"):  # killed mid-line: that file is redone
            text = text[: text.rfind("\n") + 1]
            output.write_text(text)
        done = {path for line in text.splitlines() if (path := line_path(line, fmt)) is not None}
    output.parent.mkdir(parents=True, exist_ok=True)
    return output.open("a"), done
