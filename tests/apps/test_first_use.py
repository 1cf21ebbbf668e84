"""What a new user hits first (issue 25), through the real command: silence and long audio, files checked before any
model loads, no library noise on a redirected stderr, a clip alone answered, and the smaller gaps (info's windows,
train's settings, eval's manifest, export's resume and retry, errors inside a chat session)."""

import dataclasses
import inspect
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import auralm.checkpoints
import auralm.lm.loading
import auralm.tokenizer.speech_tokenizer
from auralm.apps.chat import session
from auralm.checkpoints import load_whisper
from auralm.lm import SpeechChat
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, load_audio
from auralm.tokenizer.token_format import NO_SPEECH_REPLY
from tests.apps.test_cli import assert_one_line_error, run_main
from tests.conftest import DATA, TINY_CONFIG, randomize
from tests.lm.conftest import save_sound_adapter, tiny_llama, tiny_text_tokenizer

WAV = DATA / "en_16k.wav"
README = Path(__file__).resolve().parents[2] / "README.md"


def write_audio(path: Path, audio: np.ndarray | torch.Tensor) -> Path:
    """16 kHz mono audio as a file (FLAC keeps ten minutes of silence small)."""
    soundfile.write(path, np.asarray(audio, dtype=np.float32), SAMPLE_RATE)
    return path


def long_speech(path: Path) -> Path:
    """About 41 s of speech: 1,025 sound tokens, beyond the tiny Llama's 512 positions."""
    return write_audio(path, torch.cat([load_audio(DATA / "en_slow_22k.flac")] * 7))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_whisper_file) -> Path:
    """A tiny random speech tokenizer saved as auralm saves one, its config naming the tiny Whisper file."""
    torch.manual_seed(5)
    config = dataclasses.replace(TINY_CONFIG, whisper=str(tiny_whisper_file))
    tokenizer = SpeechTokenizer(config, load_whisper(str(tiny_whisper_file)))
    randomize(tokenizer.bottleneck, seed=5)
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("first-use") / "tokenizer")


@pytest.fixture
def never_loaded(monkeypatch):
    """Every way a command loads a model fails the test."""

    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(SpeechChat, "from_pretrained", loaded)
    monkeypatch.setattr(SpeechTokenizer, "from_pretrained", loaded)
    monkeypatch.setattr(auralm.checkpoints, "load_whisper", loaded)
    monkeypatch.setattr(auralm.lm.loading, "load_llm", loaded)


@pytest.fixture
def cli_chat(monkeypatch, tiny_chat):
    """`auralm chat` runs on the tiny chat, with the limit its flags give; forwards: the LLM's forward passes."""

    def from_pretrained(*args, max_audio_seconds=None, **kwargs):
        if max_audio_seconds is not None:
            tiny_chat.max_audio_seconds = max_audio_seconds
        return tiny_chat

    monkeypatch.setattr(SpeechChat, "from_pretrained", from_pretrained)
    tiny_chat.forwards = []
    tiny_chat.model.register_forward_pre_hook(lambda *_: tiny_chat.forwards.append(1))
    return tiny_chat


# ---- 2. silence and long audio ---------------------------------------------------------------------------------


def test_transcribe_hears_silence_as_nothing_and_refuses_audio_over_the_limit(
    capsys, monkeypatch, tokenizer_dir, tmp_path
):
    quiet, ten_minutes = write_audio(tmp_path / "quiet.flac", np.zeros(60 * SAMPLE_RATE)), tmp_path / "long.flac"
    write_audio(ten_minutes, np.zeros(600 * SAMPLE_RATE))
    monkeypatch.setattr(SpeechTokenizer, "encode", lambda *a, **k: pytest.fail("silence was encoded"))
    code, out, err = run_main(capsys, "transcribe", str(quiet), "--checkpoint", str(tokenizer_dir))
    assert (code, out) == (0, f"{quiet}: \n"), err

    started = time.perf_counter()
    code, out, err = run_main(capsys, "transcribe", str(ten_minutes), "--checkpoint", str(tokenizer_dir))
    assert code == 1 and out == ""
    assert f"FAILED {ten_minutes}: 600 s long, over the 300 s limit" in err and "--max-audio-seconds" in err
    assert time.perf_counter() - started < 5
    code, out, _ = run_main(
        capsys, "transcribe", str(ten_minutes), "--checkpoint", str(tokenizer_dir), "--max-audio-seconds", "900"
    )
    assert (code, out) == (0, f"{ten_minutes}: \n")


def test_chat_answers_silence_as_unheard_and_refuses_long_audio_and_prompts_beyond_the_context(
    capsys, cli_chat, tmp_path
):
    quiet = write_audio(tmp_path / "quiet.flac", np.zeros(20 * SAMPLE_RATE))
    code, out, err = run_main(capsys, "chat", "--audio", str(quiet), "--prompt", "what is this sound ?")
    assert (code, out) == (0, NO_SPEECH_REPLY + "\n"), err
    assert cli_chat.forwards == []  # the LLM did not run

    ten_minutes = write_audio(tmp_path / "long.flac", np.zeros(600 * SAMPLE_RATE))
    code, out, err = run_main(capsys, "chat", "--audio", str(ten_minutes), "--prompt", "hello")
    assert_one_line_error(code, err, "over the 300 s limit")
    assert out == ""

    speech = long_speech(tmp_path / "speech.wav")  # a first 30 s window of 740 tokens; the tiny Llama has 512 positions
    code, out, err = run_main(capsys, "chat", "--audio", str(speech), "--prompt", "hello", "--max-new-tokens", "8")
    assert_one_line_error(code, err, "auralm chat: error: the prompt is 7")
    assert "tokens, over the 504 this LLM takes with 8 new tokens (its context: 512)" in err
    assert out == "" and cli_chat.forwards == []


def test_the_audio_limit_is_one_number_wherever_it_is_stated(capsys):
    from auralm.apps.server import ServerLimits
    from auralm.tokenizer.audio import MAX_AUDIO_SECONDS

    chat_default = inspect.signature(SpeechChat).parameters["max_audio_seconds"].default
    assert ServerLimits().max_audio_seconds == chat_default == MAX_AUDIO_SECONDS
    for command in ("chat", "serve", "transcribe", "whisper"):
        code, out, _ = run_main(capsys, command, "--help")
        assert code == 0 and f"(default: {MAX_AUDIO_SECONDS:.0f}, as the servers)" in " ".join(out.split()), command


# ---- 3. files, formats and paths checked before anything loads ---------------------------------------------------


BAD_INPUTS = ["chat --audio missing", "chat --audio not audio", "chat --llm missing", "chat --adapter missing",
              "transcribe", "tokenize", "whisper", "eval", "export"]  # fmt: skip


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], int, str]]:
    """Each case: the command line, its exit code, what its one line of stderr says."""
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all\n" * 20)
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"audio": str(not_audio), "text": "hi", "kind": "transcript"}) + "\n")
    missing = str(tmp_path / "nonexist.wav")
    return {
        "chat --audio missing": (["chat", "--audio", missing, "--prompt", "hi"], 2, f"{missing}: no such file"),
        "chat --audio not audio": (["chat", "--audio", str(not_audio), "--prompt", "hi"], 2, "not a readable audio"),
        "chat --llm missing": (["chat", "--llm", str(tmp_path / "llm"), "--prompt", "hi"], 2, "--llm"),
        "chat --adapter missing": (["chat", "--adapter", str(tmp_path / "lora"), "--prompt", "hi"], 2, "--adapter"),
        "transcribe": (["transcribe", str(not_audio)], 1, f"FAILED {not_audio}: not a readable audio file"),
        "tokenize": (["tokenize", str(not_audio)], 1, f"FAILED {not_audio}: not a readable audio file"),
        "whisper": (["whisper", str(not_audio)], 1, f"FAILED {not_audio}: not a readable audio file"),
        "eval": (["eval", str(manifest)], 2, f"{not_audio}: not a readable audio file"),
        "export": (["export", missing, "--out", str(tmp_path / "out")], 2, f"{missing}: no such file or folder"),
    }


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_file_or_path_fails_at_once_without_loading_a_model(capsys, never_loaded, tmp_path, case):
    argv, exit_code, message = bad_inputs(tmp_path)[case]
    started = time.perf_counter()
    code, out, err = run_main(capsys, *argv)
    assert code == exit_code and message in err and out == "", err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert time.perf_counter() - started < 5


# ---- 4. no library noise on a redirected stderr ------------------------------------------------------------------


def test_a_model_command_prints_no_progress_bar_nor_warning_when_stderr_is_not_a_terminal(tmp_path, tokenizer_dir):
    speech = SpeechTokenizer.from_pretrained(tokenizer_dir)
    save_sound_adapter(tmp_path, tiny_llama(tied=False), tiny_text_tokenizer(), speech, output_rows=False)
    ask = [sys.executable, "-m", "auralm", "chat", "--checkpoint", str(tokenizer_dir), "--prompt", "hello",
           "--max-new-tokens", "2", "--device", "cpu"]  # fmt: skip
    with_adapter = subprocess.run(
        [*ask, "--llm", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert with_adapter.returncode == 0, with_adapter.stderr
    assert with_adapter.stdout.strip() and with_adapter.stderr == ""
    without = subprocess.run([*ask, "--llm", str(tmp_path / "base")], capture_output=True, text=True, timeout=300)
    assert without.returncode == 0, without.stderr
    assert without.stderr == (  # a real warning stays
        "this LLM had no sound tokens; they were added untrained, so it cannot understand audio yet\n"
    )


# ---- 5. a clip alone is a whole request ---------------------------------------------------------------------------


def test_a_clip_alone_is_answered_and_the_session_goes_on(capsys, monkeypatch, cli_chat):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a script: no terminal, no more input
    code, out, err = run_main(capsys, "chat", "--audio", str(WAV), "--max-new-tokens", "4")
    assert code == 0 and out.count("\n") == 1 and out.strip(), err
    assert "/audio FILE" not in err  # the session's help is for terminals
    assert cli_chat.forwards

    monkeypatch.setattr(sys, "stdin", io.StringIO("what is the cat ?\n"))
    code, out, _ = run_main(capsys, "chat", "--audio", str(WAV), "--max-new-tokens", "4")
    assert code == 0 and len(out.splitlines()) == 2 and all(out.splitlines())


# ---- 6. the smaller gaps ----------------------------------------------------------------------------------------


def test_info_counts_the_windows_of_the_tokenizers_config_without_loading_whisper(
    capsys, monkeypatch, tmp_path, tokenizer_dir
):
    monkeypatch.setattr(auralm.tokenizer.speech_tokenizer, "load_whisper", lambda *a: pytest.fail("Whisper loaded"))
    clip = write_audio(tmp_path / "long.wav", torch.cat([load_audio(DATA / "en_slow_22k.flac")] * 4))  # 23.5 s
    code, out, err = run_main(capsys, "info", str(clip))  # the shipped tokenizer: 10 s windows
    assert code == 0, err
    assert "588 sound tokens, 3 windows of ≤ 10 s (0.0–" in out
    code, out, err = run_main(capsys, "info", str(clip), "--checkpoint", str(tokenizer_dir))  # 30 s windows
    assert code == 0 and "588 sound tokens, 1 window of ≤ 30 s (0.0–23.5 s)" in out, err


def test_train_lists_a_recipes_settings_with_their_values(capsys):
    code, out, err = run_main(capsys, "train", "sft", "--list-settings", "max_steps=7")
    assert code == 0, err
    lines = out.splitlines()
    assert "  max_steps = 7  (int)" in lines and "  text_ratio = " in out and "  lora_r = " in out
    assert any(line.startswith("  refusal = ") for line in lines)
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0 and "--list-settings" in " ".join(out.split())


def test_the_readme_says_what_an_eval_manifest_holds():
    from auralm.evaluation import KINDS

    text = README.read_text()
    start = text.index("auralm eval MANIFEST")
    section = text[start : text.index("auralm data synth", start)]
    assert "`kind`" in section and all(f"`{kind}`" in section for kind in KINDS) and "`answer`" in section


def test_export_retries_the_inputs_that_failed_when_asked(capsys, tmp_path, tokenizer_dir):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("en_16k.wav", "en_8k.wav", "en_fast_24k.ogg"):
        shutil.copy(DATA / name, folder / name)
    (folder / "late.wav").write_bytes(b"not yet audio" * 100)
    out = tmp_path / "tokens"
    export = ["export", str(folder), "--out", str(out), "--checkpoint", str(tokenizer_dir), "--shard-size", "2",
              "--num-workers", "0", "--device", "cpu"]  # fmt: skip
    code, _, err = run_main(capsys, *export)
    assert code == 1 and "exported 3 of 4 inputs" in err and "1 failed" in err
    shutil.copy(DATA / "en_16k.wav", folder / "late.wav")  # the file is mended
    code, _, err = run_main(capsys, *export)
    assert code == 1 and "1 failed" in err  # a plain rerun resumes: nothing to do
    code, _, err = run_main(capsys, *export, "--retry-failed")
    assert code == 0 and "exported 4 of 4 inputs" in err, err
    assert "1 shard was done before this run" in err
    assert (out / "errors.jsonl").read_text() == ""
    assert json.loads((out / "export.json").read_text())["failed"] == 0


def test_a_failing_message_in_a_session_is_reported_and_the_session_goes_on(tiny_chat, capsys, tmp_path):
    speech = long_speech(tmp_path / "speech.wav")
    gone = shutil.copy(WAV, tmp_path / "gone.wav")

    class Typed(io.StringIO):
        """The clip is deleted once attached, before the message it goes with."""

        def readline(self, *args) -> str:
            line = super().readline(*args)
            if line.startswith("what is the cat"):
                Path(gone).unlink(missing_ok=True)
            return line

    typed = Typed(f"/audio {speech}\nwhat is this ?\n/audio {gone}\nwhat is the cat ?\nhello\n")
    stdout = io.StringIO()
    assert session(tiny_chat, typed, stdout, max_new_tokens=4) == 0
    err = capsys.readouterr().err
    assert "error: the prompt is 7" in err and f"error: {gone}: no such file" in err
    assert len(stdout.getvalue().splitlines()) == 1  # "hello" answered
