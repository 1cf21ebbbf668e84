"""Real human speech with exact transcripts, from a Debian package installed offline, for judging models apart from
the synthetic voices they trained on: the Asterisk PBX's English prompts (`asterisk-core-sounds-en-wav`: one
professional speaker, Allison Smith, read in a studio, 8 kHz telephone band; CC-BY-SA-3.0), each prompt's text
in `asterisk-core-sounds-en`'s core-sounds-en.txt.gz ("name: text" a line).

    rows = asterisk_prompts()                       # the clean prompts: no tones, silences or "…" fragments
    write_manifest("data/human-v1/test.jsonl", rows)  # a manifest `auralm eval` reads
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from auralm.data.examples import DataError
from auralm.files import write_text_atomically

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL = "apt-get install asterisk-core-sounds-en-wav"


def asterisk_prompts(sounds: Path = ASTERISK_SOUNDS, texts: Path = ASTERISK_TEXTS) -> list[dict]:
    """The prompts with a recording and a whole sentence of text, as manifest rows (id, audio, text, kind, source,
    voice, language), in the text file's order. Left out: tones and silences (their text is a bracketed note or
    the file is under silence/), fragments ("…" in the text), and prompts without a recording."""
    for path in (sounds, texts):
        if not path.exists():
            raise DataError(f"{path}: missing; install the Asterisk prompts: {INSTALL}")
    rows = []
    with gzip.open(texts, "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            name, colon, text = line.partition(":")
            name, text = name.strip(), text.strip()
            if line.startswith(";") or not colon or not text or text.startswith(("[", "(")) or "..." in text:
                continue
            audio = sounds / f"{name}.wav"
            if name.startswith("silence/") or not audio.is_file():
                continue
            rows.append({"id": name, "audio": str(audio), "text": text, "kind": "transcript", "source": "asterisk",
                         "voice": "human:allison-smith", "language": "en"})  # fmt: skip
    if not rows:
        raise DataError(f"{texts}: no prompt with a recording in {sounds}")
    return rows


def write_manifest(path: str | os.PathLike, rows: list[dict]) -> Path:
    """The rows as a JSONL manifest (written whole or not at all)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path
