"""Where examples come from and go to: readers for every source kind (`read_examples`), the export format
(`export.py`, written and read there) and its job, `auralm tokenize`'s token lines, and synthetic speech with its
texts and voices. Imports from tokenizer and checkpoints only.

The readers load torch (through the tokenizer), so they are imported on first use: `auralm --help` stays quick.
"""

from importlib import import_module

from auralm.data.examples import ArrowAudio, DataError, Example

_LAZY = {"read_examples": "auralm.data.readers", "export_info": "auralm.data.export",
         "export_rows": "auralm.data.export", "read_export": "auralm.data.export"}  # fmt: skip

__all__ = ["ArrowAudio", "DataError", "Example", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
