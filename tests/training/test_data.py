"""Training data: every source kind, decoding in DataLoader workers, skipping bad examples, packing, the sampler."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from auralm.data import DataError, Example, read_examples
from auralm.data.token_lines import format_line
from auralm.tokenizer import SAMPLE_RATE, load_audio
from auralm.training import AudioTextDataset, BucketBatchSampler, SkippedExamples, collate, pack_examples
from auralm.training.audio_dataset import PACK_SLACK_SECONDS
from tests.conftest import DATA, TEXTS

CLIPS = sorted(TEXTS)  # 7 espeak-ng clips, 2.3–5.9 s, in wav/flac/ogg/opus/mp3 at 8–48 kHz
LANGUAGES = {name: name.split("_")[0] for name in CLIPS}  # "en" or "de"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """The clips with a .txt side file each, in a subfolder."""
    root = tmp_path_factory.mktemp("folder")
    (root / "clips").mkdir()
    for name in CLIPS:
        shutil.copy(DATA / name, root / "clips" / name)
        (root / "clips" / name).with_suffix(".txt").write_text(TEXTS[name] + "\n")
    return root


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def manifest(clip_folder) -> Path:
    """A manifest beside the clips: relative paths, ids left to default, languages given."""
    rows = [{"audio": n, "text": TEXTS[n], "language": LANGUAGES[n]} for n in CLIPS]
    return write_manifest(clip_folder / "clips" / "train.jsonl", rows)


def audio_table():
    """The clips as a datasets.Dataset with an Audio column holding each file's bytes."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    columns = {
        "audio": [{"bytes": (DATA / n).read_bytes(), "path": n} for n in CLIPS],
        "text": [TEXTS[n] for n in CLIPS],
        "language": [LANGUAGES[n] for n in CLIPS],
    }
    return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "train"
    audio_table().save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("parquet") / "train-00000-of-00001.parquet"
    audio_table().to_parquet(str(path))
    return path


def decoded(examples: list[Example]) -> list[torch.Tensor]:
    dataset = AudioTextDataset(examples)
    return [dataset[i].audio for i in range(len(dataset))]


# ---- sources ----


@pytest.mark.parametrize("kind", ["manifest", "folder", "datasets", "parquet", "parquet folder"])
def test_every_source_gives_the_same_examples(kind, request, clip_folder):
    source = {
        "manifest": lambda: request.getfixturevalue("manifest"),
        "folder": lambda: clip_folder / "clips",
        "datasets": lambda: request.getfixturevalue("saved_dataset"),
        "parquet": lambda: request.getfixturevalue("parquet_file"),
        "parquet folder": lambda: request.getfixturevalue("parquet_file").parent,
    }[kind]()
    examples = read_examples(source)

    assert [e.id for e in examples] == CLIPS
    assert [e.text for e in examples] == [TEXTS[n] for n in CLIPS]
    assert [e.language for e in examples] == [None if kind == "folder" else LANGUAGES[n] for n in CLIPS]
    # Durations from the headers, without decoding: within one 16 kHz sample of the decoded length.
    audio = decoded(examples)
    for example, clip, name in zip(examples, audio, CLIPS, strict=True):
        assert example.seconds == pytest.approx(len(clip) / SAMPLE_RATE, abs=1.5 / SAMPLE_RATE), name
        torch.testing.assert_close(clip, load_audio(DATA / name), rtol=0, atol=0)


def test_manifest_paths_durations_and_ids(tmp_path, clip_folder):
    """Absolute paths stay as they are; a 'duration' or 'seconds' field is used instead of the header."""
    rows = [
        {"audio": str(clip_folder / "clips" / CLIPS[0]), "text": " padded  ", "id": 7, "duration": 1.5},
        {"audio": str(clip_folder / "clips" / CLIPS[1]), "text": "b", "seconds": 2},
    ]
    first, second = read_examples(write_manifest(tmp_path / "m.jsonl", rows))
    assert (first.id, first.text, first.seconds, first.audio) == ("7", "padded", 1.5, rows[0]["audio"])
    assert (second.id, second.seconds) == (rows[1]["audio"], 2.0)


def test_token_export_joins_a_manifest_by_path(tmp_path, monkeypatch, manifest):
    monkeypatch.chdir(manifest.parent.parent)  # `auralm tokenize clips/…` wrote paths relative to where it ran
    generator = torch.Generator().manual_seed(0)
    codes = {n: torch.randint(0, 513, (10 + i,), generator=generator) for i, n in enumerate(CLIPS)}
    lines = [format_line(Path("clips") / n, codes[n], 3.25, "jsonl") for n in CLIPS]
    export = tmp_path / "tokens.jsonl"
    export.write_text("\n".join(reversed(lines)) + "\n")  # export order does not matter: the manifest's does

    examples = read_examples(export, texts=manifest)
    assert [e.text for e in examples] == [TEXTS[n] for n in CLIPS]
    assert all(e.seconds == 3.25 and e.language == LANGUAGES[n] for e, n in zip(examples, CLIPS, strict=True))
    batch = collate([AudioTextDataset(examples)[i] for i in range(len(examples))])
    assert batch.audio is None and batch.texts == [TEXTS[n] for n in CLIPS]
    for got, name in zip(batch.codes, CLIPS, strict=True):
        assert torch.equal(got, codes[name])

    export.write_text("\n".join(lines[:3]) + "\n")  # an export of part of the manifest's files
    with pytest.warns(UserWarning, match="4 of the 7 examples .* have no codes"):
        assert [e.text for e in read_examples(export, texts=manifest)] == [TEXTS[n] for n in CLIPS[:3]]
    monkeypatch.chdir(tmp_path)  # the relative paths now point nowhere
    with pytest.raises(DataError, match=r"none of its paths .* run from the folder `auralm tokenize` ran in"):
        read_examples(export, texts=manifest)
    with pytest.raises(DataError, match="holds no transcripts: pass texts="):
        read_examples(export)
    with pytest.raises(DataError, match="texts= is only for a sound-token export"):
        read_examples(manifest, texts=manifest)


def test_unreadable_sources_are_clear_errors(tmp_path, saved_dataset):
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        read_examples(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not a data source auralm reads: expected a JSONL manifest"):
        read_examples(DATA / CLIPS[0])
    (tmp_path / "list.jsonl").write_text('{"file": "a.wav"}\n')
    with pytest.raises(DataError, match=r"keys \['file'\]: a manifest's lines have 'audio' and 'text'"):
        read_examples(tmp_path / "list.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav", "text": "hi"}\n{"audio": "b.wav", "text": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'text' must be a string"):
        read_examples(tmp_path / "bad.jsonl")
    (tmp_path / "extra").mkdir()
    shutil.copy(DATA / CLIPS[0], tmp_path / "extra" / CLIPS[0])
    with pytest.raises(DataError, match=f"1 audio files have no .txt side file .*first: {CLIPS[0]}"):
        read_examples(tmp_path / "extra")
    (tmp_path / "splits").mkdir()
    shutil.copytree(saved_dataset, tmp_path / "splits" / "train")
    (tmp_path / "splits" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DataError, match="a DatasetDict with splits train: pass one split's folder"):
        read_examples(tmp_path / "splits")
    with pytest.raises(DataError, match=r"no column 'transcript' .* text_column="):
        read_examples(saved_dataset, text_column="transcript")
    with pytest.raises(DataError, match="column 'language' is string, not an Audio column"):
        read_examples(saved_dataset, audio_column="language")


# ---- decoding, skipping ----


def test_bad_examples_are_skipped_counted_and_the_rest_batched(tmp_path):
    good = CLIPS[:5]  # de_16k, en_16k, en_48k, en_8k, en_fast_24k: all under 5 s but de_16k (5.9 s)
    for name in good:
        shutil.copy(DATA / name, tmp_path / name)
    wav = (DATA / "en_16k.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (tmp_path / "noise.flac").write_bytes(b"not audio at all" * 100)
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = [{"audio": n, "text": TEXTS[n]} for n in good]
    rows += [{"audio": n, "text": "bad"} for n in ("truncated.wav", "noise.flac", "empty.wav", "gone.wav")]
    examples = read_examples(write_manifest(tmp_path / "m.jsonl", rows))

    dataset = AudioTextDataset(examples, window_seconds=5.0)
    sampler = BucketBatchSampler(dataset.lengths, batch_size=3, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    skipped, seen = SkippedExamples(), []
    for batch in loader:  # decoded in 2 worker processes, tallied here
        skipped.add(batch.skipped)
        seen += [ids[0] for ids in batch.ids]
        for clip, length, ids in zip(batch.audio, batch.audio_lengths, batch.ids, strict=True):
            torch.testing.assert_close(clip[:length], load_audio(tmp_path / ids[0]), rtol=0, atol=0)
            assert not clip[length:].any()
        sampler.advance()

    assert skipped.counts() == {"unreadable": 2, "empty": 1, "missing": 1, "too long": 1}
    assert skipped.reasons["de_16k.flac"] == "too long" and skipped.reasons["gone.wav"] == "missing"
    assert sorted(seen) == sorted(good[1:])  # 9 items, 3 batches of 3: nothing dropped, all good ones kept
    assert str(skipped).startswith("skipped 5 examples: 1 empty (empty.wav); 1 missing (gone.wav);")
    restored = SkippedExamples()
    restored.load_state_dict(skipped.state_dict())
    assert str(restored) == str(skipped)


# ---- packing ----


def test_packing_fills_windows_and_keeps_transcripts_in_order(manifest):
    examples = read_examples(manifest)
    by_id = {e.id: e for e in examples}
    dataset = AudioTextDataset(examples, window_seconds=10.0, pack=True, gap_seconds=0.2)
    gap = round(0.2 * SAMPLE_RATE)

    assert len(dataset) == 4  # the 6 English clips in 3 windows; German never shares one with English
    assert sorted(e.id for members in dataset.packs for e in members) == sorted(by_id)  # each once
    for index in range(len(dataset)):
        sample = dataset[index]
        assert len(sample.audio) <= 10.0 * SAMPLE_RATE and not sample.skipped
        assert sample.text == " ".join(by_id[i].text for i in sample.ids)
        assert len({by_id[i].language for i in sample.ids}) == 1 == len({sample.language})
        start = 0
        for i in sample.ids:  # the clips one after another, a silent gap between
            clip = load_audio(by_id[i].audio)
            torch.testing.assert_close(sample.audio[start : start + len(clip)], clip, rtol=0, atol=0)
            start += len(clip)
            assert not sample.audio[start : start + gap].any()
            start += gap
        assert start - gap == len(sample.audio)
    assert dataset.lengths[0] == pytest.approx(len(dataset[0].audio) / SAMPLE_RATE, abs=1e-3)


def test_packing_never_exceeds_the_window():
    generator = torch.Generator().manual_seed(0)
    seconds = (torch.rand(500, generator=generator) * 12).tolist()
    examples = [
        Example(id=str(i), text=str(i), audio="", language="ab"[i % 2], seconds=s if i % 50 else None)
        for i, s in enumerate(seconds)
    ]
    packs = pack_examples(examples, window_seconds=10.0, gap_seconds=0.2)

    assert sorted(int(e.id) for p in packs for e in p) == list(range(500))  # each example once
    for pack in packs:
        assert [int(e.id) for e in pack] == sorted(int(e.id) for e in pack)  # in source order
        assert len({e.language for e in pack}) == 1
        if len(pack) > 1:
            assert all(e.seconds is not None for e in pack)
            assert sum(e.seconds + PACK_SLACK_SECONDS for e in pack) + 0.2 * (len(pack) - 1) <= 10.0
    alone = {e.id for (e,) in (p for p in packs if len(p) == 1) if e.seconds is None or e.seconds > 10.0}
    assert alone == {e.id for e in examples if e.seconds is None or e.seconds > 10.0}
    packed = [p for p in packs if len(p) > 1]
    assert sum(e.seconds for p in packed for e in p) / (10.0 * len(packed)) > 0.9  # windows nearly full
    assert pack_examples(examples, 10.0, 0.2) == packs  # deterministic


def test_a_clip_that_overflows_its_pack_is_skipped_not_cut(manifest):
    """Headers may understate a length; the pack then drops the clip that no longer fits."""
    examples = [e for e in read_examples(manifest) if e.language == "en"][:2]
    short = [Example(e.id, e.text, e.audio, e.language, seconds=1.0) for e in examples]
    dataset = AudioTextDataset(short, window_seconds=4.0, pack=True, gap_seconds=0.2)
    (sample,) = [dataset[i] for i in range(len(dataset))]
    assert sample.ids == (short[0].id,) and sample.skipped == ((short[1].id, "too long"),)
    assert sample.text == short[0].text and len(sample.audio) <= 4.0 * SAMPLE_RATE


# ---- sampler ----

LENGTHS = (torch.rand(103, generator=torch.Generator().manual_seed(1)) * 20).tolist()


def epoch(sampler: BucketBatchSampler) -> list[list[int]]:
    batches = list(sampler)
    for _ in range(len(batches) // sampler.micro_batches):
        sampler.advance()
    return batches


def test_sampler_order_is_fixed_by_seed_and_epoch():
    a, b = BucketBatchSampler(LENGTHS, 8, seed=3), BucketBatchSampler(LENGTHS, 8, seed=3)
    first = epoch(a)
    assert first == epoch(b) and len(first) == 12  # 103 items: 12 batches of 8, 7 left out
    assert len({i for batch in first for i in batch}) == 96
    second = epoch(a)
    assert second != first and a.epoch == 2
    assert epoch(BucketBatchSampler(LENGTHS, 8, seed=4)) != first
    # Buckets of length-sorted items: with one bucket per epoch, every batch is a run of sorted lengths.
    whole = BucketBatchSampler(LENGTHS, 8, seed=3, bucket_batches=100)
    ranks = {i: r for r, i in enumerate(sorted(whole.global_batches(0).ravel(), key=LENGTHS.__getitem__))}
    for batch in epoch(whole):
        positions = sorted(ranks[i] for i in batch)
        assert positions == list(range(positions[0], positions[0] + 8))


def test_sampler_resumes_exactly_where_it_stopped():
    uninterrupted = BucketBatchSampler(LENGTHS, 8, seed=5)
    expected = epoch(uninterrupted) + epoch(uninterrupted)

    for stop in (0, 5, 12, 17):  # at an epoch's start, inside one, at the boundary, inside the next
        run = BucketBatchSampler(LENGTHS, 8, seed=5)
        got = []
        while len(got) < stop:
            for batch in run:
                got.append(batch)
                run.advance()
                if len(got) == stop:
                    break
        state = run.state_dict()
        resumed = BucketBatchSampler(LENGTHS, 8, seed=5)
        resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint stores it
        while len(got) < len(expected):
            assert len(resumed) == 12 - resumed.batches_done
            got += epoch(resumed)
        assert got == expected, stop

    prefetching = BucketBatchSampler(LENGTHS, 8, seed=5)
    list(DataLoader(range(103), batch_sampler=prefetching, num_workers=0))  # iterating alone moves nothing
    assert prefetching.state_dict() == BucketBatchSampler(LENGTHS, 8, seed=5).state_dict()
    with pytest.raises(DataError, match="saved data position is for batch_size 8, this run has 16"):
        BucketBatchSampler(LENGTHS, 16, seed=5).load_state_dict(state)


def test_ranks_split_each_global_batch():
    one = epoch(BucketBatchSampler(LENGTHS, 8, seed=2))
    ranks = [epoch(BucketBatchSampler(LENGTHS, 8, seed=2, rank=r, world_size=2)) for r in range(2)]
    for whole, *slices in zip(one, *ranks, strict=True):
        assert all(len(s) == 4 for s in slices)
        assert sorted(slices[0] + slices[1]) == sorted(whole)
    # One process accumulating 2 micro-batches sees exactly what 2 ranks see, step by step.
    micro = epoch(BucketBatchSampler(LENGTHS, 8, seed=2, micro_batches=2))
    assert micro[0::2] == ranks[0] and micro[1::2] == ranks[1]
    four = [epoch(BucketBatchSampler(LENGTHS, 8, seed=2, rank=r, world_size=2, micro_batches=2)) for r in range(2)]
    for step, whole in enumerate(one):
        assert sorted(i for f in four for i in f[2 * step] + f[2 * step + 1]) == sorted(whole)
    with pytest.raises(DataError, match="batch_size 8 does not split evenly into world_size × micro_batches = 3 × 1"):
        BucketBatchSampler(LENGTHS, 8, seed=2, rank=0, world_size=3)
    with pytest.raises(DataError, match="103 items do not fill one batch of 128"):
        BucketBatchSampler(LENGTHS, 128, seed=2)


def test_sampler_draws_from_no_global_generator():
    torch.manual_seed(0)
    np.random.seed(0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    epoch(BucketBatchSampler(LENGTHS, 8, seed=1))
    pack_examples([Example(str(i), "", "", seconds=s) for i, s in enumerate(LENGTHS)], 30.0)
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
