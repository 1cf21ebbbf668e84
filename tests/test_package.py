"""The top-level package: one error family, the public API importable from `auralm`, and a light import."""

import subprocess
import sys

import pytest

import auralm
from auralm import AuralmError


@pytest.mark.parametrize("name", ["AudioError", "CheckpointError", "TokenFormatError", "SpeechTokenizerMismatchError"])
def test_every_error_is_an_auralm_error(name):
    assert issubclass(getattr(auralm, name), AuralmError)


def test_public_api_from_the_top():
    from auralm.lm import SpeechChat
    from auralm.tokenizer import SpeechTokenizer, load_audio

    assert auralm.SpeechTokenizer is SpeechTokenizer and auralm.SpeechChat is SpeechChat
    assert auralm.load_audio is load_audio and auralm.SAMPLE_RATE == 16_000
    assert set(auralm.__all__) <= set(dir(auralm)) | set(auralm._EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        auralm.nope  # noqa: B018


def test_import_auralm_does_not_import_torch():
    probe = "import sys, auralm; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
