"""Synthetic speech data: real voices of five families (espeak-ng, flite, festival, Piper, hibari), byte-for-byte
determinism, the held-out splits, resuming, the augmentations, and that the clips are speech Whisper understands."""

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import soundfile
import torch

from auralm.apps import cli
from auralm.data import augment, voices
from auralm.data import synthetic_speech as synth
from auralm.data.speech_conversations import ANSWER_PROMPT
from auralm.data.speech_texts import (
    FORTUNES_DIR,
    SOURCES,
    SpokenText,
    arithmetic_questions,
    clean_sentence,
    normalize,
    split_texts,
    spoken_texts,
)
from auralm.tokenizer import SAMPLE_RATE, load_audio
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT
from auralm.training.sft import read_conversations

if not all(map(voices.family_available, voices.FAMILIES)) or not FORTUNES_DIR.is_dir():
    pytest.skip(
        "a voice family or Debian's fortunes missing: `make test` installs them (apt-get install espeak-ng flite "
        "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes-min fortunes; pip install "
        "'auralm[train]')",
        allow_module_level=True,
    )

SEED, EXAMPLES = 2, 12  # seed 2's first 12 clips: 2 test, 1 val, every voice family
SPLITS = synth.RECIPES[synth.DEFAULT_RECIPE].splits
# The first two clips the shipped models' data set (v1, seed 0) was made with, as planned by the code that made it
# (38bb2d5); the shipped models' held-out figures are measured on clips planned the same way.
FIRST_V1_CLIPS = [("piper:en_US-joe-medium", "Tuesday is the Wednesday of the rest of your life."),
                  ("espeak-ng:en-029+m8", "Peter's hungry, time to eat lunch.")]  # fmt: skip


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))} | {
        p.name: p.read_bytes() for p in sorted((folder / "audio").iterdir())
    }


def rows(folder: Path) -> list[dict]:
    return [
        json.loads(line) for split in SPLITS for line in (folder / synth.manifest_name(split)).read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """12 clips made by the command line, one worker."""
    out = tmp_path_factory.mktemp("speech") / "data"
    assert cli.main(["data", "synth", "--out", str(out), "--examples", str(EXAMPLES), "--seed", str(SEED)]) == 0
    return out


def test_layout_and_manifest_rows(made):
    summary = json.loads((made / "summary.json").read_text())
    assert summary["examples"] == EXAMPLES and summary["made_now"] == EXAMPLES
    assert sum(s["examples"] for s in summary["splits"].values()) == EXAMPLES
    assert all(s["examples"] > 0 for s in summary["splits"].values()) and list(summary["splits"]) == list(SPLITS)
    assert list(summary["families"]) == sorted(voices.FAMILIES) and summary["recipe"] == synth.DEFAULT_RECIPE
    lines = rows(made)
    assert sorted(r["id"] for r in lines) == [f"{i:06d}" for i in range(EXAMPLES)]
    for split in SPLITS:  # plan order within each manifest
        ids = [json.loads(line)["id"] for line in (made / synth.manifest_name(split)).read_text().splitlines()]
        assert ids == sorted(ids)
    for row in lines:
        info = soundfile.info(made / row["audio"])
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", SAMPLE_RATE, 1)
        assert row["kind"] in ("transcript", "question") and ("answer" in row) == (row["kind"] == "question")
        assert set(row["augment"]) == {"tts", "speed", "reverb", "noise", "telephone", "level_dbfs", "seed"}
        assert 0.5 < row["duration"] < 15 and row["voice"].split(":")[0] in voices.FAMILIES
        assert ("topic" in row) == row["source"].startswith("wiki") or row["source"] == "repeat"


def test_chat_manifests_hold_every_clip_as_sft_conversations(made):
    for split in SPLITS:
        clips = [json.loads(line) for line in (made / synth.manifest_name(split)).read_text().splitlines()]
        conversations = {c["id"]: c["messages"] for c in read_conversations(made / synth.manifest_name(split, True))}
        for row in clips:
            audio = str((made / row["audio"]).absolute())
            user, reply = conversations.pop(f"{row['id']}-transcribe")  # spoken questions are transcribed too
            assert user["content"] == [{"audio": audio}, TRANSCRIBE_PROMPT] and reply["content"] == [row["text"]]
            if row["kind"] == "transcript":
                continue
            user, reply = conversations.pop(f"{row['id']}-spoken")
            assert user["content"][0] == {"audio": audio} and user["content"][1:] in ([], [ANSWER_PROMPT])
            assert reply["content"] == [row["answer"]]
            user, reply = conversations.pop(f"{row['id']}-text")
            assert user["content"] == [row["text"]] and reply["content"] == [row["answer"]]
        assert not conversations, "conversations without a clip"


def test_same_seed_same_bytes_whatever_the_workers(made, tmp_path):
    out = tmp_path / "again"
    synth.generate(out, seed=SEED, examples=EXAMPLES, workers=2, progress=False)
    assert files(out) == files(made)
    other = tmp_path / "other"
    synth.generate(other, seed=SEED + 1, examples=EXAMPLES, progress=False)
    assert [r["text"] for r in rows(other)] != [r["text"] for r in rows(made)]


def test_resume_makes_only_what_is_missing(made, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(made, out)
    (out / "audio" / "000004.flac").unlink()
    test = out / "test.jsonl"
    test.write_text(test.read_text()[:-10])  # a crash in the middle of a line: its last clip is made again
    train = out / "train.jsonl"  # a line left by older code: another text for the clip
    first, rest = train.read_text().split("\n", 1)
    train.write_text(json.dumps(json.loads(first) | {"text": "Something else."}) + "\n" + rest)
    summary = synth.generate(out, seed=SEED, examples=EXAMPLES, progress=False)
    assert summary["made_now"] == 3
    assert files(out) == files(made)
    # more examples extend the plan: the first 12 clips and their lines stay as they are
    summary = synth.generate(out, seed=SEED, examples=EXAMPLES + 3, progress=False)
    assert summary["made_now"] == 3
    assert all((out / "audio" / name).read_bytes() == data for name, data in files(made).items() if ".flac" in name)
    assert [r for r in rows(out) if int(r["id"]) < EXAMPLES] == rows(made)
    with pytest.raises(voices.SynthesisError, match=r"resumed: made with .*'seed': 2.*a new --out"):
        synth.generate(out, seed=SEED + 1, examples=EXAMPLES, progress=False)


def test_held_out_voices_topics_and_sentences(made):
    recipe = synth.RECIPES[synth.DEFAULT_RECIPE]
    plan = synth.plan_examples(SEED, examples=4000)
    by_split = {split: [e for e in plan if e.split == split] for split in SPLITS}
    for split, share in recipe.held_out.items():
        assert share - 0.02 < len(by_split[split]) / len(plan) < share + 0.02
    for a, b in itertools.combinations(by_split.values(), 2):
        assert not {e.voice for e in a} & {e.voice for e in b}
        assert not {normalize(e.item.text) for e in a} & {normalize(e.item.text) for e in b}
        assert not {e.item.group for e in a} & {e.item.group for e in b}  # a fact asked another way, too
    families = {split: {e.voice.split(":")[0] for e in examples} for split, examples in by_split.items()}
    assert families == {split: set(weights) for split, weights in recipe.family_weights.items()}
    assert "festival" in families["test"] - families["train"] - families["val"]  # a whole family held out
    topics = {split: {e.item.topic for e in examples} for split, examples in by_split.items()}
    assert set(recipe.test_topics) <= topics["test"] and not set(recipe.test_topics) & (topics["train"] | topics["val"])
    assert len(topics["train"]) > 8 and len(topics["val"]) > 8  # the other topics are held out article by article
    for split in SPLITS:
        assert {e.item.source for e in by_split[split]} == set(recipe.source_weights)
    assert synth.plan_examples(SEED, examples=50) == plan[:50]  # a larger run extends a smaller one
    by_id = {e.id: e for e in plan}
    for row in rows(made):
        assert row["text"] == by_id[row["id"]].item.text and row["voice"] == by_id[row["id"]].voice
    train, val = by_split["train"], by_split["val"]
    leaked = [*train[:5], synth.PlannedExample(9999, "val", train[0].item, val[0].voice, val[0].augment)]
    with pytest.raises(AssertionError, match="a text in two splits"):
        synth.check_held_out(leaked)


def test_first_recipe_keeps_its_plan():
    """v1 plans the shipped models' data exactly as it was: espeak-ng and Piper, train and val, Piper train only."""
    plan = synth.plan_examples(0, examples=3000, recipe="v1")
    assert {e.split for e in plan} == {"train", "val"} and 0.12 < sum(e.split == "val" for e in plan) / 3000 < 0.18
    assert {e.voice.split(":")[0] for e in plan} == {"espeak-ng", "piper"}
    assert voices.PIPER_VOICE not in {e.voice for e in plan if e.split == "val"}
    assert not any(e.item.source.startswith("wiki") for e in plan)
    # the first clips of the shipped models' data set, as it was made
    assert [(e.voice, e.item.text) for e in plan[:2]] == FIRST_V1_CLIPS


def test_manifest_reads_and_audio_decodes(made):
    from auralm.data import read_examples

    by_id = {r["id"]: r for r in rows(made)}
    for split in SPLITS:
        for example in read_examples(made / synth.manifest_name(split)):
            row = by_id[example.id]
            assert example.text == row["text"] and example.language == "en"
            assert example.seconds == row["duration"]
            audio = load_audio(example.audio)
            assert abs(audio.numel() / SAMPLE_RATE - row["duration"]) < 1e-3
            # the planned level is the clip's peak (16-bit rounding aside)
            assert audio.abs().max().item() == pytest.approx(10 ** (row["augment"]["level_dbfs"] / 20), rel=1e-3)


def band_energy(audio: torch.Tensor, low: float, high: float) -> float:
    spectrum = torch.fft.rfft(audio).abs().pow(2)
    f = torch.fft.rfftfreq(audio.numel(), 1 / SAMPLE_RATE)
    return spectrum[(f >= low) & (f < high)].sum().item()


def test_augmentations():
    generator = torch.Generator().manual_seed(0)
    tone = torch.sin(2 * math.pi * 440 * torch.arange(SAMPLE_RATE) / SAMPLE_RATE)
    # speed: 10 % faster is 10 % shorter and 10 % higher
    faster = augment.to_16k(tone, SAMPLE_RATE, 1.1)
    assert faster.numel() == pytest.approx(SAMPLE_RATE / 1.1, abs=20)
    peak = torch.fft.rfftfreq(faster.numel(), 1 / SAMPLE_RATE)[torch.fft.rfft(faster).abs().argmax()]
    assert peak.item() == pytest.approx(484, abs=3)
    # noise at the asked SNR; pink noise has 10 dB less power per decade up
    white = augment.coloured_noise(SAMPLE_RATE, "white", generator)
    noisy = augment.add_noise(tone, white, 15.0)
    assert 10 * math.log10(tone.pow(2).sum() / (noisy - tone).pow(2).sum()) == pytest.approx(15.0, abs=0.01)
    pink = augment.coloured_noise(4 * SAMPLE_RATE, "pink", generator)
    ratio = band_energy(pink, 100, 1000) / band_energy(pink, 1000, 10000)
    assert ratio == pytest.approx(1.0, rel=0.2)  # equal energy per decade
    assert band_energy(white, 1000, 8000) / band_energy(white, 100, 1000) > 5
    # telephone: the band survives, the rest is gone
    phone = augment.telephone(white)
    assert phone.numel() == white.numel()
    assert band_energy(phone, 4000, 8000) < 1e-3 * band_energy(white, 4000, 8000)
    assert band_energy(phone, 1000, 3000) > 0.5 * band_energy(white, 1000, 3000)
    assert band_energy(phone, 0, 100) < 0.05 * band_energy(white, 0, 100)
    # reverb: a click rings on for about rt60, and the direct path stays first
    click = torch.zeros(SAMPLE_RATE)
    click[100] = 1.0
    wet = augment.reverb(click, rt60_s=0.5, drr_db=0.0, generator=generator)
    assert wet[:100].abs().max() < 1e-6 and wet[100] > 0.9  # FFT round-off before the click
    tail = wet[101:].pow(2)
    assert tail.sum().item() == pytest.approx(1.0, rel=0.01)  # drr 0 dB: tail energy = direct energy
    assert tail[: SAMPLE_RATE // 4].sum() > 10 * tail[SAMPLE_RATE // 4 :].sum() > 0


def test_texts():
    assert clean_sentence("  Money may buy   friendship but money cannot buy love. ") == (
        "Money may buy friendship but money cannot buy love."
    )
    for bad in ("Too short.", "See http://example.org for more details", "Caf\u00e9 au lait is nice today",
                "BELA LUGOSI is my co-pilot", "A (parenthetical) remark here", " ".join(["word"] * 26),
                "Love America -- or give it back.", "... If I had heart failure right now",
                "Your lucky number is 3552664958674928.", "My local address is 127.0.0.1 today"):  # fmt: skip
        assert clean_sentence(bad) is None, bad
    for item in arithmetic_questions():
        a, op, b = re.fullmatch(r"(?:What|How much) is (\d+) (plus|minus|times|divided by) (\d+)\?", item.text).groups()
        expected = {"plus": int.__add__, "minus": int.__sub__, "times": int.__mul__, "divided by": int.__floordiv__}
        assert item.answer == f"{expected[op](int(a), int(b))}."
    items = spoken_texts(SEED, wiki=True)
    assert len({normalize(i.text) for i in items}) == len(items)
    assert {i.source for i in items} == set(SOURCES)
    assert all(i.text.isascii() and (i.answer is None) == (i.kind == "transcript") for i in items)
    wiki = [i for i in items if i.source.startswith("wiki")]
    assert len(wiki) > 30_000 and len({w for i in wiki for w in normalize(i.text).split()}) > 25_000
    assert "What is a computer mouse?" in {i.text for i in wiki} and "Who was Neil Armstrong?" in {i.text for i in wiki}
    splits = split_texts(items, {"val": 0.1, "test": 0.1}, SEED, {"test": ("Mathematics",)})
    assert "Mathematics" not in {i.topic for i in splits["train"] + splits["val"]}
    for held_out in (splits["val"], splits["test"]):
        texts = {i.text for i in held_out if i.kind == "transcript"}
        for item in held_out:
            if item.source == "repeat":  # said back from a held-out sentence, never a training one
                assert item.answer in texts


@pytest.mark.integration
def test_clips_are_speech_whisper_understands(whisper_tiny_en, tmp_path):
    from auralm.tokenizer import transcribe, word_error_rate

    text = "The weather is lovely today, so we will walk to the park after lunch."
    clean = {"speed": 1.0, "reverb": None, "noise": None, "telephone": False, "level_dbfs": -3.0, "seed": 0}
    speakers = {
        "espeak-ng:en-gb": {"rate_wpm": 160, "pitch": 50},
        voices.PIPER_VOICE: {"length_scale": 1.0, "noise_scale": 0.6, "noise_w_scale": 0.8},
        voices.HIBARI_VOICE: {"speed": 1.0},
        **{f"flite:{name}": {"duration_stretch": 1.0} for name in voices.FLITE_VOICES},
        **{f"festival:{name}": {"duration_stretch": 1.0} for name in voices.FESTIVAL_VOICES},
    }
    (tmp_path / "audio").mkdir()
    for index, (voice, tts) in enumerate(speakers.items()):
        item = SpokenText(text, "transcript", None, "fortunes", "test")
        row = synth.synthesize(synth.PlannedExample(index, "train", item, voice, clean | {"tts": tts}), tmp_path)
        heard = transcribe(whisper_tiny_en, load_audio(tmp_path / row["audio"]), language="en").text
        assert word_error_rate(text, heard) < 0.5, (voice, heard)
