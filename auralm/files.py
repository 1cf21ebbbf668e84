"""Files a kill never leaves half written: the text goes beside the file first, then is renamed over it."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one rename; a kill leaves the old file or the new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
