"""What every data source yields: `Example`s (an utterance, its transcript, maybe its codes), and the one
reader of JSON-lines files the manifests share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auralm.errors import AuralmError

DURATION_FIELDS = ("duration", "seconds")  # a manifest's or table's length field, in seconds, under either name


class DataError(AuralmError):
    """A training data source that cannot be read; the message names it and says what to do."""


class ArrowAudio:
    """The encoded audio file in row `row` of an Arrow binary column (a datasets folder or Parquet file).

    Holds the column, not the bytes, so examples stay small; forked DataLoader workers share the buffers.
    """

    __slots__ = ("column", "row")

    def __init__(self, column, row: int):  # column: pyarrow.ChunkedArray of binary
        self.column, self.row = column, row

    def read(self) -> bytes:
        return self.column[self.row].as_py()

    def __repr__(self) -> str:
        return f"ArrowAudio(row={self.row})"


@dataclass(frozen=True, eq=False)
class Example:
    """One utterance and its transcript.

    audio: a file path, or encoded bytes held in an Arrow column.
    codes: (T,) int32 sound tokens, for examples from a token export (then `audio` is the path they came from).
    seconds: the audio's length if known without decoding; None when unknown.
    """

    id: str
    text: str | None  # None only from read_examples(require_text=False)
    audio: str | ArrowAudio
    language: str | None = None
    seconds: float | None = None
    codes: np.ndarray | None = None


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, dict) for each non-blank line; a line that is not a JSON object is a DataError."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not JSON ({e.msg}); each line is one JSON object") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a JSON {type(row).__name__}, expected an object")
            yield number, row


def duration_field(row: dict, where: str) -> float | None:
    """A row's length in seconds from its `duration` or `seconds` field; None when it has neither."""
    for key in DURATION_FIELDS:
        if (value := row.get(key)) is not None:
            if not isinstance(value, (int, float)) or value < 0:
                raise DataError(f"{where}: {key!r} must be a length in seconds, got {value!r}")
            return float(value)
    return None
