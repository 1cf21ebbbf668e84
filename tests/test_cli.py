"""The `auralm` command as a user runs it: a real process, its output and exit codes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA


def auralm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auralm", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    result = auralm("--help")
    assert result.returncode == 0
    for command in ("demo", "info", "whisper", "models"):
        assert command in result.stdout


def test_version():
    from auralm import __version__

    assert auralm("--version").stdout.strip() == f"auralm {__version__}"


def test_unknown_file_is_one_readable_line_and_exit_2(tmp_path):
    missing = tmp_path / "missing.wav"
    result = auralm("info", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"auralm info: error: {missing}: no such file or folder"
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_file_in_a_folder_is_reported_and_the_rest_done(tmp_path):
    for name in ("a.wav", "c.flac"):
        (tmp_path / name).write_bytes(
            (DATA / "en_16k.wav" if name == "a.wav" else DATA / "en_slow_22k.flac").read_bytes()
        )
    (tmp_path / "b.mp3").write_bytes(b"this is not audio" * 100)
    result = auralm("info", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'a.wav'}: 3.06 s" in result.stdout and f"{tmp_path / 'c.flac'}: 5.87 s" in result.stdout
    assert f"FAILED {tmp_path / 'b.mp3'}: not a readable audio file" in result.stderr
    assert "2 of 3 files done" in result.stderr
    assert "Traceback" not in result.stderr


def test_info_counts_tokens_and_windows():
    result = auralm("info", str(DATA / "en_8k.wav"))
    assert result.returncode == 0
    # 2.3 s at 8 kHz → 16 kHz samples, ⌈n / 640⌉ tokens
    samples = int(result.stdout.split("→ ")[1].split(" samples")[0])
    assert f"{-(-samples // 640)} sound tokens, 1 window" in result.stdout


def test_models_lists_the_packaged_weights():
    result = auralm("models")
    assert result.returncode == 0
    assert "tiny.en" in result.stdout and "base" in result.stdout and "(installed)" in result.stdout


def test_unknown_whisper_model_is_exit_2():
    result = auralm("whisper", str(DATA / "en_16k.wav"), "--model", "large-v9")
    assert result.returncode == 2 and "known names" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_whisper_command_transcribes(tmp_path):
    result = auralm("whisper", str(DATA / "en_8k.wav"), str(DATA / "de_16k.flac"), "--model", "base")
    assert result.returncode == 0, result.stderr
    assert "[en]: Can you hear me" in result.stdout
    assert "[de]: Guten Morgen" in result.stdout


@pytest.mark.integration
def test_demo_runs_offline_end_to_end():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "auralm", "demo"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "[4/4]" in result.stdout
    wer = float(result.stdout.split("done: WER ")[1].split()[0])
    assert wer < 0.25


@pytest.mark.integration
def test_tokenize_writes_one_line_per_file_and_resumes(tmp_path, tokenizer_folder):
    import json

    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("en_16k.wav", "en_8k.wav", "en_48k.opus"):
        (audio / name).write_bytes((DATA / name).read_bytes())
    bad = {
        "broken.flac": (b"fLaC" + bytes(100), "not a readable audio file"),
        "empty.wav": (b"", "empty file"),
        "notes.wav": (b"not audio, just text\n" * 50, "not a readable audio file"),
        "cut.wav": ((DATA / "en_16k.wav").read_bytes()[:5000], "truncated"),
    }
    for name, (content, _) in bad.items():
        (audio / name).write_bytes(content)
    out = tmp_path / "tokens.jsonl"
    result = auralm(
        "tokenize", str(audio), "--checkpoint", str(tokenizer_folder), "--format", "jsonl", "--output", str(out)
    )
    assert result.returncode == 1, result.stderr  # the bad files fail, the others are done
    for name, (_, reason) in bad.items():
        assert f"FAILED {audio / name}: {reason}" in result.stderr
    assert "3 of 7 files done" in result.stderr and "Traceback" not in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == ["en_16k.wav", "en_48k.opus", "en_8k.wav"]
    for row in rows:
        assert len(row["codes"]) == -(-round(row["seconds"] * 16000) // 640)
        assert all(0 <= c < 512 for c in row["codes"])

    # A kill mid-line: the cut line is dropped and its file redone; finished files are skipped.
    text = out.read_text()
    out.write_text(text[: text.rfind("\n", 0, len(text) - 1) + 1] + text.splitlines()[-1][:20])
    again = auralm(
        "tokenize", str(audio), "--checkpoint", str(tokenizer_folder), "--format", "jsonl", "--output", str(out)
    )
    assert "resuming: 2 of 7 files already" in again.stderr
    assert out.read_text() == text


@pytest.mark.integration
def test_tokenize_string_format_and_transcribe_run(tokenizer_folder):
    result = auralm("tokenize", str(DATA / "en_8k.wav"), "--checkpoint", str(tokenizer_folder))
    assert result.returncode == 0, result.stderr
    path, tokens = result.stdout.strip().split("\t")
    assert (
        path == str(DATA / "en_8k.wav")
        and tokens.startswith("<|sound_start|><|sound_")
        and tokens.endswith("<|sound_end|>")
    )
    result = auralm("transcribe", str(DATA / "en_8k.wav"), "--checkpoint", str(tokenizer_folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{DATA / 'en_8k.wav'}: ")


def test_tokenize_with_a_missing_checkpoint_is_exit_2(tmp_path):
    result = auralm("tokenize", str(DATA / "en_8k.wav"), "--checkpoint", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"auralm tokenize: error: {tmp_path / 'nope'}: no such tokenizer folder or checkpoint file"
    )


@pytest.mark.integration
def test_chat_answers_one_prompt_with_audio(tokenizer_folder):
    result = auralm(
        "chat", "--prompt", "What is the capital of France?", "--audio", str(DATA / "en_8k.wav"),
        "--checkpoint", str(tokenizer_folder), "--max-new-tokens", "40",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "sound tokens; they were added untrained" in result.stderr


@pytest.mark.integration
def test_chat_session_commands(tokenizer_folder, tmp_path):
    session = "\n".join([
        f"/audio {tmp_path / 'missing.wav'}",  # reported, the session goes on
        f"/audio {DATA / 'en_8k.wav'}",
        "What is the capital of France?",
        "/reset",
        "/nonsense",
        "/exit",
        "What is never asked?",
    ])  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "auralm", "chat", "--checkpoint", str(tokenizer_folder), "--max-new-tokens", "40"],
        input=session, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "missing.wav: no such file" in result.stderr
    assert (
        "attached" in result.stderr
        and "conversation forgotten" in result.stderr
        and "unknown command /nonsense" in result.stderr
    )
    assert "Paris" in result.stdout
    assert result.stdout.count("\n") == 1  # one answer: nothing after /exit


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_chat_and_serve_take_every_model_argument(command):
    from auralm.cli import build_parser

    args = build_parser().parse_args(
        [command, "--checkpoint", "tok", "--llm", "m.gguf", "--adapter", "lora", "--whisper", "base"]
    )
    assert (args.checkpoint, args.llm, args.adapter, args.whisper, args.device) == (
        "tok",
        "m.gguf",
        "lora",
        "base",
        "cpu",
    )
