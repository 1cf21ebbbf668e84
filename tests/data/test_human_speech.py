"""`auralm data human`: the Asterisk prompts as a test manifest of real human speech, tones, silences, fragments and
prompts without a recording left out; the installed package read whole where apt could install it."""

import gzip
import json
import subprocess

import numpy as np
import pytest
import soundfile

from auralm.data import DataError, read_examples
from auralm.data.human_speech import ASTERISK_SOUNDS, ASTERISK_TEXTS, asterisk_prompts
from tests.training.conftest import AURALM

TEXTS = """; Asterisk's English prompts
activated: Activated.
beep: [this is a simple beep tone]
silence/1: [1 second of silence]
agent-pass: Please enter your password followed by the pound key.
digits/1: 1
vm-and: ...and
missing: This prompt has no recording.
"""


def test_the_clean_prompts_with_a_recording_become_manifest_rows(tmp_path):
    sounds, texts = tmp_path / "sounds", tmp_path / "core-sounds-en.txt.gz"
    for name in ("activated", "beep", "silence/1", "agent-pass", "digits/1", "vm-and"):
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(sounds / f"{name}.wav", np.zeros(800, dtype=np.int16), 8000)
    texts.write_bytes(gzip.compress(TEXTS.encode()))
    rows = asterisk_prompts(sounds, texts)
    assert [(r["id"], r["text"]) for r in rows] == [
        ("activated", "Activated."),
        ("agent-pass", "Please enter your password followed by the pound key."),
        ("digits/1", "1"),
    ]
    assert rows[0]["audio"] == str(sounds / "activated.wav") and rows[0]["kind"] == "transcript"
    with pytest.raises(DataError, match=r"missing; install the Asterisk prompts: apt-get install"):
        asterisk_prompts(tmp_path / "nowhere", texts)


NOT_INSTALLED = "the Asterisk prompts are not installed (apt-get install asterisk-core-sounds-en-wav)"


@pytest.mark.skipif(not ASTERISK_SOUNDS.is_dir() or not ASTERISK_TEXTS.is_file(), reason=NOT_INSTALLED)
def test_the_installed_prompts_make_a_manifest_eval_reads(tmp_path):
    out = tmp_path / "human" / "test.jsonl"
    done = subprocess.run([*AURALM, "data", "human", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) > 400 and f"{out}: {len(rows)} prompts" in done.stdout
    assert all(r["text"] and "..." not in r["text"] and not r["id"].startswith("silence/") for r in rows)
    examples = read_examples(out)
    assert [e.text for e in examples] == [r["text"] for r in rows]
    info = soundfile.info(rows[0]["audio"])
    assert info.samplerate == 8000 and info.channels == 1 and info.duration > 0.3
