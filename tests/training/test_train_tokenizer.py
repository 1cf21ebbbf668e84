"""The tokenizer recipe through the real `auralm train` command: the loss falls, codes get used, a run
killed mid-way resumes to bit-identical weights, a 2-process torchrun matches 1 process, and the
trained tokenizer encodes as it validated."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from auralm.tokenizer import SpeechTokenizer, load_audio
from auralm.training.checkpointing import Checkpoints
from tests.conftest import DATA, ENGLISH_CLIPS, TEXTS
from tests.training.conftest import AURALM


def manifest(path: Path, repeats: int = 1) -> Path:
    lines = [
        {"id": f"{name}-{r}", "audio": str(DATA / name), "text": TEXTS[name]}
        for r in range(repeats)
        for name in ENGLISH_CLIPS
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def tiny_run(tmp_path: Path, whisper: Path, name: str, *extra: str) -> list[str]:
    """Settings for a fast run on the tiny random Whisper (10 s windows, 32 codes, fp32 for exactness)."""
    return [
        f"train={manifest(tmp_path / 'train.jsonl')}", f"output_dir={tmp_path / name}", f"whisper={whisper}",
        f"feature_cache={tmp_path / 'features'}", "n_codes=32", "codebook_dim=8", "window_seconds=10",
        "pack=false", "batch_size=2", "bf16=false", "progress=false", "log_every=1", "warmup_steps=2", "device=cpu", *extra,
    ]  # fmt: skip


def train(*settings: str, extra_args: tuple[str, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    command = [*AURALM, "train", "tokenizer", *settings, "--threads", "1", *extra_args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


def logged(run_dir: Path, metric: str = "total") -> list[float]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row[metric] for row in rows if metric in row]


def test_resume_after_a_kill_ends_bit_identical(tmp_path, tiny_whisper_file):
    steps = ["max_steps=24", "save_every=1"]
    whole = train(*tiny_run(tmp_path, tiny_whisper_file, "whole", *steps))
    assert whole.returncode == 0, whole.stderr

    command = [
        *AURALM,
        "train",
        "tokenizer",
        *tiny_run(tmp_path, tiny_whisper_file, "killed", *steps),
        "--threads",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = Checkpoints(tmp_path / "killed" / "checkpoints")
    deadline = time.monotonic() + 300
    while len(checkpoints.steps()) < 1 or checkpoints.steps()[-1].name < "step-00000006":
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoints.latest()["step"]
    assert 6 <= killed_at < 24

    again = train(*tiny_run(tmp_path, tiny_whisper_file, "killed", *steps), extra_args=("--resume",))
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {killed_at}" in again.stdout
    ours = load_file(tmp_path / "killed" / "tokenizer" / "model.safetensors")
    theirs = load_file(tmp_path / "whole" / "tokenizer" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # the resumed run's losses continue the uninterrupted run's, step for step
    assert logged(tmp_path / "killed")[-(24 - killed_at) :] == logged(tmp_path / "whole")[killed_at:]


def test_a_run_with_checkpoints_is_not_overwritten(tmp_path, tiny_whisper_file):
    settings = tiny_run(tmp_path, tiny_whisper_file, "run", "max_steps=2")
    assert train(*settings).returncode == 0
    second = train(*settings)
    assert second.returncode == 2 and "pass --resume" in second.stderr
    bad = train(*settings, "max_step=3")
    assert bad.returncode == 2 and "unknown config key(s) max_step" in bad.stderr


def test_init_starts_from_a_saved_tokenizer_of_the_same_shape(tmp_path, tiny_whisper_file):
    assert train(*tiny_run(tmp_path, tiny_whisper_file, "first", "max_steps=2")).returncode == 0
    first = tmp_path / "first" / "tokenizer"
    # lr 0: AdamW changes nothing, so every weight the optimizer owns is still the init's after a step
    tuned = train(*tiny_run(tmp_path, tiny_whisper_file, "tuned", "max_steps=1", "lr=0", f"init={first}"))
    assert tuned.returncode == 0, tuned.stderr
    ours = load_file(tmp_path / "tuned" / "tokenizer" / "model.safetensors")
    init = load_file(first / "model.safetensors")
    learned = [k for k in init if not k.startswith("rq.") or "project" in k]  # not the EMA codebook
    assert learned and all(torch.equal(ours[k], init[k]) for k in learned)
    fresh = train(*tiny_run(tmp_path, tiny_whisper_file, "fresh", "max_steps=1", "lr=0"))
    assert fresh.returncode == 0
    assert not torch.equal(
        load_file(tmp_path / "fresh" / "tokenizer" / "model.safetensors")[learned[0]], init[learned[0]]
    )
    other = train(*tiny_run(tmp_path, tiny_whisper_file, "other", "max_steps=1", "n_codes=16", f"init={first}"))
    assert other.returncode == 2 and "differs from this run's" in other.stderr


def test_keep_codes_trains_the_decode_half_and_the_codes_stay(tmp_path, tiny_whisper_file):
    assert train(*tiny_run(tmp_path, tiny_whisper_file, "first", "max_steps=2")).returncode == 0
    first = tmp_path / "first" / "tokenizer"
    kept = train(*tiny_run(tmp_path, tiny_whisper_file, "kept", "max_steps=6", "keep_codes=true", f"init={first}"))
    assert kept.returncode == 0, kept.stderr
    before = SpeechTokenizer.from_pretrained(first, whisper=tiny_whisper_file)
    after = SpeechTokenizer.from_pretrained(tmp_path / "kept" / "tokenizer", whisper=tiny_whisper_file)
    assert after.tokenizer_hash == before.tokenizer_hash  # an LLM trained on the first one's codes still pairs
    clips = [load_audio(DATA / name) for name in ENGLISH_CLIPS]
    assert all(torch.equal(a, b) for a, b in zip(after.encode(clips), before.encode(clips), strict=True))
    ours = load_file(tmp_path / "kept" / "tokenizer" / "model.safetensors")
    init = load_file(first / "model.safetensors")
    decode_half = [
        k for k in init if k.startswith(("_out_blocks", "ln_post", "positional_embedding")) and "rotary" not in k
    ]
    assert decode_half and all(not torch.equal(ours[k], init[k]) for k in decode_half)
    ce = logged(tmp_path / "kept", "ce")
    assert ce[-1] < ce[0]  # the decoder reads the same codes better
    alone = train(*tiny_run(tmp_path, tiny_whisper_file, "alone", "max_steps=1", "keep_codes=true"))
    assert alone.returncode == 2 and "keep_codes=true keeps the codes of init=" in alone.stderr


def test_keep_codes_may_deepen_the_decode_half_starting_from_init(tmp_path, tiny_whisper_file):
    assert train(*tiny_run(tmp_path, tiny_whisper_file, "first", "max_steps=2")).returncode == 0
    first = tmp_path / "first" / "tokenizer"
    deeper = ("keep_codes=true", "depth=3", f"init={first}")
    # lr 0: the added blocks still hold their initial values, so what the decoder reads shows where training starts
    start = train(*tiny_run(tmp_path, tiny_whisper_file, "start", "max_steps=1", "lr=0", *deeper))
    assert start.returncode == 0, start.stderr
    before = SpeechTokenizer.from_pretrained(first, whisper=tiny_whisper_file)
    after = SpeechTokenizer.from_pretrained(tmp_path / "start" / "tokenizer", whisper=tiny_whisper_file)
    assert after.config.depth == 3 and after.tokenizer_hash == before.tokenizer_hash
    codes = before.encode(load_audio(DATA / ENGLISH_CLIPS[0]))[None]
    torch.testing.assert_close(after.bottleneck.dequantize(codes), before.bottleneck.dequantize(codes))

    trained = train(*tiny_run(tmp_path, tiny_whisper_file, "trained", "max_steps=6", *deeper))
    assert trained.returncode == 0, trained.stderr
    weights = load_file(tmp_path / "trained" / "tokenizer" / "model.safetensors")
    assert all(weights[f"_out_blocks.{i}.attn.out.weight"].abs().sum() > 0 for i in (1, 2))  # the added blocks learn
    ce = logged(tmp_path / "trained", "ce")
    assert ce[-1] < ce[0]
    shallower = train(*tiny_run(tmp_path, tiny_whisper_file, "shallower", "max_steps=1", "depth=2", f"init={first}"))
    assert shallower.returncode == 2 and "with keep_codes=true, depth may grow" in shallower.stderr


def test_a_checkpoint_cut_short_leaves_the_previous_one(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save(1, {"step": 1, "weights": torch.ones(3)})

    def dies_mid_write(state, f):
        f.write(b"\x80\x02partial")
        raise KeyboardInterrupt  # the process is killed here

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(2, {"step": 2, "weights": torch.zeros(3)})
    assert checkpoints.latest()["step"] == 1
    monkeypatch.undo()
    checkpoints.save(3, {"step": 3})  # the next save clears what the cut one left
    assert [p.name for p in checkpoints.steps()] == ["step-00000001", "step-00000003"]
    assert not list(tmp_path.glob(".partial-*"))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_whisper_file):
    # k-means init and dead-code replacement sample inputs at random, differently per rank: off here
    steps = ["max_steps=4", "kmeans_init=false", "dead_code_threshold=0"]
    one = train(*tiny_run(tmp_path, tiny_whisper_file, "one", *steps))
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "auralm"]
    two = subprocess.run(
        [*torchrun, "train", "tokenizer", *tiny_run(tmp_path, tiny_whisper_file, "two", *steps), "--threads", "1"],
        capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    for metric in ("total", "grad_norm"):  # the gradient's norm catches a wrong scale that AdamW would hide
        torch.testing.assert_close(
            torch.tensor(logged(tmp_path / "two", metric)), torch.tensor(logged(tmp_path / "one", metric)),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
    ours = load_file(tmp_path / "two" / "tokenizer" / "model.safetensors")
    theirs = load_file(tmp_path / "one" / "tokenizer" / "model.safetensors")
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.integration
def test_real_whisper_loss_falls_codes_get_used_and_validation_codes_are_encode_codes(tmp_path):
    run = tmp_path / "real"
    result = train(
        f"train={manifest(tmp_path / 'train.jsonl')}", f"val={manifest(tmp_path / 'val.jsonl')}",
        f"output_dir={run}", "whisper=tiny.en", "n_codes=32", "window_seconds=10", "pack=false",
        "batch_size=4", "max_steps=40", "lr=0.003", "warmup_steps=5", "log_every=5", "eval_every=40",
        "val_examples=2", "progress=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    totals = [row["total"] for row in rows if "total" in row]
    assert totals[-1] <= 0.5 * totals[0], totals
    assert max(row["codes_used"] for row in rows if "codes_used" in row) >= 0.25  # of 33 codes
    assert "val_wer" in rows[-1]

    tokenizer = SpeechTokenizer.from_pretrained(run / "tokenizer")
    assert tokenizer.config.window_seconds == 10
    validated = json.loads((run / "validation_codes.json").read_text())
    for name in ENGLISH_CLIPS[:2]:
        assert tokenizer.encode(load_audio(DATA / name)).tolist() == validated[f"{name}-0"]
