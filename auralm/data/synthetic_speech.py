"""Synthetic English speech for training, made offline and deterministically from a seed.

    auralm data synth --out data/speech-v2 --hours 106 --seed 0 [--workers 2]

writes
    DIR/audio/NNNNNN.flac   16 kHz mono 16-bit FLAC, one utterance each
    DIR/{split}.jsonl       one line per example: id, audio (relative to DIR), text, kind, answer (questions),
                            source, topic, voice, augment, duration, language; `auralm.data.read_examples`
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

import itertools
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch

from auralm.data.augment import augment, speed_rate
from auralm.data.speech_conversations import clip_conversations
from auralm.data.speech_texts import SpokenText, normalize, split_texts, spoken_texts
from auralm.data.voices import (
    FAMILIES,
    FESTIVAL_VOICES,
    FLITE_VOICES,
    HIBARI_VOICE,
    PIPER_VOICE,
    SynthesisError,
    require,
    speak,
)
from auralm.files import write_text_atomically
from auralm.tokenizer import SAMPLE_RATE

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")  # fmt: skip
# espeak-ng voice variants ("" is the plain voice) whose speech Whisper tiny.en still follows: mean WER ≤ 0.5
# over the 8 accents on 32 fortunes (the plain voice 0.25; whisperf, linda, paul, ed, f1, Annie, victor, Gene
# and others were 0.5–0.8 and are left out). Every accent stays: the tokenizer learns from the transcripts.
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f2", "f3", "f5", "steph", "steph2",
                   "benjamin", "edward", "edward2", "grandpa", "iven", "john", "max", "Michael", "Mike", "quincy",
                   "rob", "robert", "sandro")  # fmt: skip


@dataclass(frozen=True)
class DataRecipe:
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
    "broad": DataRecipe(
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
    "v1": DataRecipe(
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


def split_voices(seed: int, recipe: DataRecipe, families: tuple[str, ...] | None = None) -> dict[str, dict[str, list]]:
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
    speed = round(SAMPLE_RATE / speed_rate(rng.uniform(0.9, 1.1)), 4)
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


def make_clip(example: PlannedExample) -> torch.Tensor:
    """The example's speech, augmented as planned: (T,) float32 at 16 kHz, peak at `level_dbfs`."""
    choices = example.augment
    audio, rate = speak(example.voice, example.item.text, choices["tts"], choices["seed"])
    return augment(torch.from_numpy(audio), rate, choices)


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
    require(families)
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
