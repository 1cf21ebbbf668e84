"""Sound tokens per file, one line each (`auralm tokenize --output`): written resumably after a kill, and read
back joined with transcripts for the LLM recipes.

Formats (one line per audio file):
    string  PATH<TAB><|sound_start|><|sound_0012|>…<|sound_end|>
    ids     PATH<TAB>12 7 431 …
    jsonl   {"path": PATH, "seconds": 3.1, "codes": [12, 7, 431, …]}
A rerun with the same output file skips the files already written there, and
drops a last line cut short by the kill. It refuses a file that holds another
format (or is no tokens file at all) rather than mixing lines.

torch loads on first use, not on import, so `auralm --help` stays quick.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from auralm.data.examples import DataError, Example, duration_field, json_lines
from auralm.errors import AuralmError

if TYPE_CHECKING:
    import torch

FORMATS = ("string", "ids", "jsonl")
_IDS = re.compile(r"\d+(?: \d+)*")
_STRING = re.compile(r"<\|sound_start\|>(?:<\|sound_\d{4,}\|>)*<\|sound_end\|>")


def format_line(path: Path, codes: torch.Tensor, seconds: float, fmt: str) -> str:
    """One output line for a clip's codes (T,)."""
    from auralm.tokenizer import codes_to_string

    if fmt == "string":
        return f"{path}\t{codes_to_string(codes)}"
    if fmt == "ids":
        return f"{path}\t{' '.join(map(str, codes.tolist()))}"
    return json.dumps({"path": str(path), "seconds": round(seconds, 3), "codes": codes.tolist()})


def line_format(line: str) -> str | None:
    """Which of FORMATS a complete output line is in, or None for a line that is none of them."""
    if line.startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None
        return "jsonl" if isinstance(row, dict) and {"path", "codes"} <= row.keys() else None
    path, tab, tokens = line.partition("\t")
    if not (path and tab):
        return None
    if _STRING.fullmatch(tokens):
        return "string"
    return "ids" if tokens == "" or _IDS.fullmatch(tokens) else None


def line_path(line: str, fmt: str) -> str:
    """The audio path a complete line in format `fmt` is about."""
    return str(json.loads(line)["path"]) if fmt == "jsonl" else line.split("\t", 1)[0]


def resume(output: Path, fmt: str) -> set[str]:
    """The audio paths `output` already holds lines for (none when it does not exist yet), after dropping
    a last line cut short by a kill: that file is redone.

    Raises AuralmError, leaving the file as it was, when it holds lines of another format, lines that
    are not sound tokens, or cannot be read or written.
    """
    try:
        text = output.read_text() if output.exists() else ""
    except UnicodeDecodeError:
        raise AuralmError(f"{output}: not a file of sound tokens (not text); choose another --output") from None
    except OSError as e:
        raise AuralmError(f"{output}: cannot read it ({e.strerror}); choose another --output") from None
    complete = text[: text.rfind("\n") + 1]
    done = set()
    for number, line in enumerate(complete.splitlines(), 1):
        found = line_format(line)
        if found is None:
            raise AuralmError(f"{output}: line {number} is not a line of sound tokens; choose another --output")
        if found != fmt:
            raise AuralmError(f"{output} holds {found!r} lines; rerun with --format {found} or choose another --output")
        done.add(line_path(line, fmt))
    if complete != text:
        try:
            output.write_text(complete)
        except OSError as e:
            raise AuralmError(f"{output}: cannot write it ({e.strerror}); choose another --output") from None
    return done


def token_lines_codes(path: Path) -> dict[str, tuple[np.ndarray, float | None]]:
    """The codes and seconds of each audio file of the jsonl tokens file at `path`, by the file's real path."""
    codes_by_path = {}
    for number, row in json_lines(path):
        codes, audio = row.get("codes"), row.get("path")
        if not isinstance(codes, list) or not all(isinstance(c, int) and c >= 0 for c in codes):
            raise DataError(f"{path}:{number}: 'codes' must be a list of non-negative integers")
        codes_by_path[os.path.realpath(str(audio))] = (
            np.asarray(codes, dtype=np.int32),
            duration_field(row, f"{path}:{number}"),
        )
    return codes_by_path


def join_codes(
    codes_by_path: dict[str, tuple[np.ndarray, float | None]],
    transcribed: list[Example],
    path: Path,
    texts: str | os.PathLike,
) -> list[Example]:
    """The examples of `transcribed` (read from `texts`) that have codes in `codes_by_path` (read from the tokens
    file or export at `path`, keyed by real path), in their order, with codes and transcripts.

    The codes may cover more files than `transcribed` (one file, a manifest per split); examples without
    codes are left out with a warning.
    """
    examples = []
    for example in transcribed:
        found = codes_by_path.get(os.path.realpath(example.audio)) if isinstance(example.audio, str) else None
        if found is not None:
            codes, seconds = found
            examples.append(replace(example, codes=codes, seconds=example.seconds if seconds is None else seconds))
    if not examples:
        first_path = next(iter(codes_by_path), None)
        raise DataError(
            f"{path}: none of its paths (e.g. {first_path!r}, resolved from {Path.cwd()}) is an audio file of {texts}; "
            "run from the folder `auralm tokenize` ran in, or tokenize with absolute paths"
        )
    if len(examples) < len(transcribed):
        warnings.warn(
            f"{path}: {len(transcribed) - len(examples)} of the {len(transcribed)} examples of {texts} have no codes "
            "in this export; training on the others",
            stacklevel=3,
        )
    return examples
