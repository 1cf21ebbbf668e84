"""The larger-compute path, rehearsed on this CPU: a bundle made by benchmarks/gpu_bundle.py (the base LLM in parts,
every file's sha256), checked and joined, `benchmarks/gpu_train.sh --dry-run` training distill from it, and the
adapter brought back in files of at most 16 MB, joined here into a folder that loads and pairs."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from auralm.checkpoints import load_whisper
from auralm.data.export_job import export_dataset
from auralm.lm import SpeechChat, load_llm
from auralm.lm.loading import default_gguf
from auralm.tokenizer import SpeechTokenizer
from benchmarks import gpu_bundle
from tests.conftest import DATA, TEXTS, TINY_CONFIG, randomize

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration  # the packaged SmolLM2 trains for two steps


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_whisper_file) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    config = dataclasses.replace(TINY_CONFIG, whisper=str(tiny_whisper_file), window_seconds=10)
    speech = SpeechTokenizer(config, load_whisper(str(tiny_whisper_file)))
    randomize(speech.bottleneck, seed=1)
    speech.save_pretrained(folder / "tokenizer")
    manifest = folder / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(DATA / n), "text": t}) + "\n" for n, t in TEXTS.items()))
    export_dataset(manifest, folder / "export", SpeechTokenizer.from_pretrained(folder / "tokenizer"), fmt="jsonl")
    command = [sys.executable, "benchmarks/gpu_bundle.py", "make", "--recipe", "distill", "--export",
               str(folder / "export"), "--tokenizer", str(folder / "tokenizer"), "--out", str(folder / "bundle"),
               "reply_tokens=4", "batch_size=2", "pack=false", "text_ratio=0.5", "lora_r=8"]  # fmt: skip
    made = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    calls = re.findall(r"carry=(\[.*?\])", made.stdout)
    for carried in map(json.loads, calls):  # each call's pieces fit the tool's 64 MiB
        sizes = [p.stat().st_size for c in carried if c != ".whl" for p in [Path(c)] if p.is_file()]
        assert sum(sizes) < 60 * 2**20
    return folder


def test_the_bundle_holds_the_llm_in_checked_parts(bundle, tmp_path):
    parts = sorted((bundle / "bundle").glob("llm.gguf.part-*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= gpu_bundle.PART_MB * 2**20 for p in parts)
    assert not (bundle / "bundle" / "export").exists()  # carried as one .tar.gz
    gpu_bundle.verify(bundle / "bundle")
    joined = bundle / "bundle" / gpu_bundle.GGUF
    assert joined.read_bytes() == default_gguf().read_bytes()
    unpacked = {
        p.relative_to(bundle / "bundle" / "export"): p.read_bytes()
        for p in (bundle / "bundle" / "export").rglob("*.jsonl")
    }
    exported = {p.relative_to(bundle / "export"): p.read_bytes() for p in (bundle / "export").rglob("*.jsonl")}
    assert unpacked == exported and exported
    joined.unlink()
    with open(parts[0], "r+b") as f:  # a byte changed on the way
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    try:
        with pytest.raises(SystemExit, match=r"llm\.gguf\.part-000: changed on the way"):
            gpu_bundle.verify(bundle / "bundle")
    finally:
        with open(parts[0], "r+b") as f:
            f.write(first)


def test_the_dry_run_trains_and_the_adapter_comes_back_in_parts_that_join(bundle, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "BUNDLE": str(bundle / "bundle"), "OUT": str(out)}
    run = subprocess.run(["bash", "benchmarks/gpu_train.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert all(p.stat().st_size <= gpu_bundle.RESULT_MB * 2**20 for p in out.iterdir())
    gpu_bundle.join(out, tmp_path / "back")
    assert [json.loads(line)["step"] for line in (tmp_path / "back" / "metrics.jsonl").read_text().splitlines()]
    speech = SpeechTokenizer.from_pretrained(bundle / "tokenizer")
    chat = SpeechChat(*load_llm(default_gguf(), adapter=tmp_path / "back" / "adapter"), speech)
    assert chat.speech_tokenizer.tokenizer_hash == speech.tokenizer_hash  # the adapter pairs with its tokenizer


def test_a_result_over_the_size_limit_comes_back_in_parts_and_joins_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_bundle, "RESULT_MB", 1)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    weights = os.urandom(3 * 2**20 + 5)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    gpu_bundle.pack_result(run, tmp_path / "out")
    assert len(list((tmp_path / "out").glob("adapter_model.safetensors.part-*"))) == 4
    assert all(p.stat().st_size <= 2**20 for p in (tmp_path / "out").iterdir())
    gpu_bundle.join(tmp_path / "out", tmp_path / "back")
    assert (tmp_path / "back" / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in (tmp_path / "back" / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]  # fmt: skip
