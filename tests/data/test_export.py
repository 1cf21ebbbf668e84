"""`auralm export`: every input kind gives the codes `SpeechTokenizer.encode` gives; SIGKILLed twice it resumes
to every input exactly once; 2 torchrun processes write what 1 writes; bad inputs go to errors.jsonl."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from auralm.checkpoints import load_whisper
from auralm.data import DataError, read_examples
from auralm.data.export_job import ExportError, export_dataset
from auralm.tokenizer import SpeechTokenizer, load_audio, string_to_codes
from tests.conftest import DATA, TEXTS, TINY_CONFIG, randomize
from tests.training.conftest import AURALM

CLIPS = sorted(TEXTS)  # 7 clips, 2.3–5.9 s, wav/flac/ogg/opus/mp3 at 8–48 kHz, one of them stereo


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_whisper_file) -> Path:
    """A tiny random tokenizer with 10 s windows, saved (its config names the Whisper file)."""
    torch.manual_seed(3)
    config = dataclasses.replace(TINY_CONFIG, whisper=str(tiny_whisper_file), window_seconds=10)
    tokenizer = SpeechTokenizer(config, load_whisper(str(tiny_whisper_file)))
    randomize(tokenizer.bottleneck, seed=3)
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("export-tokenizer") / "tok")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> SpeechTokenizer:
    return SpeechTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def reference(tokenizer) -> dict[str, torch.Tensor]:
    """Each clip's codes, as SpeechTokenizer.encode gives them for the file alone."""
    return {name: tokenizer.encode(DATA / name) for name in CLIPS}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """The clips in nested folders; all but one with a .txt transcript beside them."""
    root = tmp_path_factory.mktemp("clips")
    for i, name in enumerate(CLIPS):
        target = root / f"part{i % 2}" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(DATA / name, target)
        if i:
            target.with_suffix(".txt").write_text(TEXTS[name])
    return root


def rows(out: Path) -> list[dict]:
    """Every row of an export's shards, read back with pyarrow, in shard order."""
    return [row for shard in sorted(out.glob("shard-*.parquet")) for row in pq.read_table(shard).to_pylist()]


def assert_codes(found: list[dict], reference: dict[str, torch.Tensor], name_of=lambda row: Path(row["source"]).name):
    for row in found:
        expected = reference[name_of(row)]
        assert np.array_equal(np.asarray(row["codes"], dtype=np.int64), expected.numpy()), row["id"]
        assert row["n_tokens"] == len(expected)


@pytest.mark.parametrize("mels_on_device", [False, True], ids=["mels-in-workers", "mels-on-device"])
def test_a_folder_exports_the_codes_of_each_file(tmp_path, tokenizer, reference, clip_folder, mels_on_device):
    summary = export_dataset(clip_folder, tmp_path / "out", tokenizer, shard_size=3, batch_size=4, num_workers=2,
                             mels_on_device=mels_on_device)  # fmt: skip
    found = rows(tmp_path / "out")
    assert [r["id"] for r in found] == sorted(f"part{i % 2}/{n}" for i, n in enumerate(CLIPS))
    assert_codes(found, reference)
    assert {r["id"]: r["text"] for r in found} == {
        f"part{i % 2}/{n}": TEXTS[n] if i else None for i, n in enumerate(CLIPS)
    }
    seconds = {n: len(load_audio(DATA / n)) / 16000 for n in CLIPS}
    for row in found:
        assert row["duration_s"] == pytest.approx(seconds[Path(row["source"]).name], abs=1e-3)
    assert (summary.exported, summary.failed, summary.shards) == (7, 0, 3)
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["tokenizer_hash"] == tokenizer.tokenizer_hash and info["rows"] == 7
    assert info["tokenizer"] == tokenizer.config.to_dict()
    assert (tmp_path / "out" / "errors.jsonl").read_text() == ""
    assert not list((tmp_path / "out").glob("*.partial"))


def test_a_manifest_exports_ids_texts_and_codes_read_by_datasets_and_pyarrow(tmp_path, tokenizer, reference):
    datasets = pytest.importorskip("datasets")
    for name in CLIPS:
        shutil.copy(DATA / name, tmp_path / name)
    lines = [{"audio": n, "id": f"clip-{i}", **({"text": TEXTS[n]} if i % 3 else {})} for i, n in enumerate(CLIPS)]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    export_dataset(tmp_path / "list.jsonl", tmp_path / "out", tokenizer, shard_size=4, num_workers=0)
    found = rows(tmp_path / "out")
    assert [r["id"] for r in found] == [f"clip-{i}" for i in range(len(CLIPS))]
    assert [r["text"] for r in found] == [TEXTS[n] if i % 3 else None for i, n in enumerate(CLIPS)]
    assert_codes(found, reference)

    shards = str(tmp_path / "out" / "shard-*.parquet")
    table = datasets.load_dataset("parquet", data_files=shards, split="train")
    assert table["id"] == [r["id"] for r in found] and table[2]["codes"] == found[2]["codes"]
    frame = pandas.concat([pandas.read_parquet(s) for s in sorted((tmp_path / "out").glob("shard-*.parquet"))])
    assert frame["id"].tolist() == table["id"] and frame["codes"].iloc[2].tolist() == found[2]["codes"]
    schema = pq.read_schema(next((tmp_path / "out").glob("shard-*.parquet")))
    assert str(schema.field("codes").type) == "list<element: int16>"


def test_a_datasets_folder_exports_its_audio_column(tmp_path, tokenizer, reference):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    columns = {"sound": [{"bytes": (DATA / n).read_bytes(), "path": n} for n in CLIPS], "name": CLIPS}
    table = datasets.Dataset.from_dict(columns).cast_column("sound", datasets.Audio())
    table.save_to_disk(str(tmp_path / "hf"))
    export_dataset(tmp_path / "hf", tmp_path / "out", tokenizer, audio_column="sound", num_workers=1)
    found = rows(tmp_path / "out")
    assert [r["source"] for r in found] == [f"{tmp_path / 'hf'}[{i}]" for i in range(len(CLIPS))]
    assert_codes(found, reference, name_of=lambda row: row["id"])  # ids: the Audio column's paths


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_training_reads_an_export_with_its_texts(tmp_path, tokenizer, reference, clip_folder, fmt):
    lines = [{"audio": str(DATA / n), "text": TEXTS[n]} for n in CLIPS]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    export_dataset(tmp_path / "list.jsonl", tmp_path / "out", tokenizer, fmt=fmt, shard_size=3, num_workers=0)
    examples = read_examples(tmp_path / "out")
    assert [(e.text, Path(e.audio).name) for e in examples] == [(TEXTS[n], n) for n in CLIPS]
    for example in examples:
        assert np.array_equal(example.codes, reference[Path(example.audio).name].numpy())

    export_dataset(clip_folder, tmp_path / "untranscribed", tokenizer, fmt=fmt, num_workers=0)
    with pytest.raises(DataError, match="has no transcript"):  # one clip has no .txt: training needs them all
        read_examples(tmp_path / "untranscribed")


def test_jsonl_holds_ichigo_token_strings(tmp_path, tokenizer, reference, clip_folder):
    export_dataset(clip_folder, tmp_path / "out", tokenizer, fmt="jsonl", shard_size=10, num_workers=0)
    (shard,) = (tmp_path / "out").glob("shard-*.jsonl")
    lines = [json.loads(line) for line in shard.read_text().splitlines()]
    assert len(lines) == len(CLIPS)
    for line in lines:
        assert line["tokens"].startswith("<|sound_start|><|sound_")
        assert torch.equal(
            string_to_codes(line["tokens"], tokenizer.config.vocab_size), reference[Path(line["source"]).name]
        )


def test_bad_inputs_are_listed_and_the_export_goes_on(tmp_path, tokenizer_dir, reference):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in CLIPS[:3]:
        shutil.copy(DATA / name, folder / name)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "noise.mp3").write_bytes(os.urandom(5000))
    (folder / "cut.flac").write_bytes((DATA / "en_slow_22k.flac").read_bytes()[:3000])
    soundfile.write(folder / "long.wav", np.zeros(16000 * 40, dtype=np.float32), 16000)
    result = subprocess.run(
        [*AURALM, "export", str(folder), "--out", str(tmp_path / "out"), "--checkpoint", str(tokenizer_dir),
         "--max-seconds", "30", "--shard-size", "2", "--num-workers", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # finished, and says some inputs failed
    assert "4 failed" in result.stderr and "exported 3 of 7 inputs" in result.stderr
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in errors) == ["cut.flac", "empty.wav", "long.wav", "noise.mp3"]
    reasons = {e["id"]: e["reason"] for e in errors}
    assert "over the 30 s limit" in reasons["long.wav"] and str(folder / "empty.wav") in reasons["empty.wav"]
    assert_codes(rows(tmp_path / "out"), reference)


def test_another_job_in_the_folder_is_refused(tmp_path, tokenizer, clip_folder):
    export_dataset(clip_folder, tmp_path / "out", tokenizer, shard_size=3, num_workers=0)
    with pytest.raises(ExportError, match=r"holds another export \(its shard_size differs\)"):
        export_dataset(clip_folder, tmp_path / "out", tokenizer, shard_size=4, num_workers=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no export"):
        export_dataset(clip_folder, tmp_path / "other", tokenizer, num_workers=0)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_relative_input_resumes_from_another_folder(tmp_path, tokenizer, clip_folder, monkeypatch):
    """job.json records the input resolved, so the same input named from elsewhere is the same export; a job.json
    of an earlier version (the input absolute but unresolved) still resumes."""
    shutil.copytree(clip_folder, tmp_path / "a" / "clips")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = export_dataset("clips", "tokens", tokenizer, shard_size=3, num_workers=0)
    monkeypatch.chdir(tmp_path / "b")
    again = export_dataset("../a/clips", "../a/tokens", tokenizer, shard_size=3, num_workers=0)
    assert again.resumed_shards == first.shards == 3 and again.exported == len(CLIPS)
    job = tmp_path / "a" / "tokens" / "job.json"
    job.write_text(json.dumps(json.loads(job.read_text()) | {"input": str(tmp_path / "b" / ".." / "a" / "clips")}))
    assert export_dataset("../a/clips", "../a/tokens", tokenizer, shard_size=3, num_workers=0).resumed_shards == 3


def ledger_lines(out: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in out.glob("progress/rank-*.jsonl"))


def test_killed_twice_the_export_resumes_to_every_input_exactly_once(tmp_path, tokenizer_folder):
    """The real tiny.en encoder (slow enough on CPU to be killed mid-run), one input per shard."""
    lines = [{"audio": str(DATA / CLIPS[i % len(CLIPS)]), "id": f"utt-{i:02d}"} for i in range(24)]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    command = [*AURALM, "export", str(tmp_path / "list.jsonl"), "--out", str(out), "--checkpoint",
               str(tokenizer_folder), "--shard-size", "1", "--num-workers", "1", "--device", "cpu"]  # fmt: skip
    for kill_after in (4, 12):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while ledger_lines(out) < kill_after and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out / "export.json").exists(), "the export finished before it could be killed"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    found = rows(out)
    assert sorted(r["id"] for r in found) == [f"utt-{i:02d}" for i in range(24)]  # each once
    speech = SpeechTokenizer.from_pretrained(tokenizer_folder)
    expected = {name: speech.encode(DATA / name) for name in CLIPS}
    assert_codes(found, expected)
    assert "24 of 24 inputs" in result.stderr and "shards were done before this run" in result.stderr


def test_two_torchrun_processes_write_what_one_writes(tmp_path, tokenizer_dir, clip_folder):
    common = [str(clip_folder), "--checkpoint", str(tokenizer_dir), "--shard-size", "2", "--device", "cpu"]
    one = subprocess.run([*AURALM, "export", *common, "--out", str(tmp_path / "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "auralm"]
    two = subprocess.run(
        [*torchrun, "export", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    ledgers = sorted(p.name for p in (tmp_path / "two" / "progress").iterdir())
    assert ledgers == ["rank-0.jsonl", "rank-1.jsonl"]  # both ranks wrote shards
    ours, theirs = rows(tmp_path / "two"), rows(tmp_path / "one")
    assert len(ours) == len(theirs) == len(CLIPS)
    for a, b in zip(ours, theirs, strict=True):
        assert {k: v for k, v in a.items() if k != "codes"} == {k: v for k, v in b.items() if k != "codes"}
        assert np.array_equal(a["codes"], b["codes"])
    one_info = json.loads((tmp_path / "one" / "export.json").read_text())
    two_info = json.loads((tmp_path / "two" / "export.json").read_text())
    assert two_info == one_info
    assert two.stderr.count("exported 7 of 7 inputs") == 1  # rank 0 alone reports
