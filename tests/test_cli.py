"""The `auralm` command as a user runs it: a real process, its output and exit codes."""

import os
import subprocess
import sys

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
