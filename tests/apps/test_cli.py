"""The `auralm` command as a user runs it: a real process, its output and exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auralm.apps.cli import main
from tests.conftest import DATA


def auralm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auralm", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    result = auralm("--help")
    assert result.returncode == 0
    for command in ("demo", "info", "whisper", "models", "merge"):
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


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_chat_and_serve_take_every_model_argument(command):
    from auralm.apps.cli import build_parser

    args = build_parser().parse_args(
        [command, "--checkpoint", "tok", "--llm", "m.gguf", "--adapter", "lora", "--whisper", "base"]
    )
    assert (args.checkpoint, args.llm, args.adapter, args.whisper, args.device) == (
        "tok",
        "m.gguf",
        "lora",
        "base",
        "auto",
    )


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """`auralm ARGV` in this process: exit code, stdout, stderr. An exception escaping main fails the test,
    as a traceback would in a real run."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, flag: str) -> None:
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err and flag in err and "Traceback" not in err


WAV = str(DATA / "en_16k.wav")
BAD_ARGUMENTS = {
    "batch size 0": (["tokenize", WAV, "--checkpoint", "tok", "--batch-size", "0"], "--batch-size"),
    "batch size -1": (["tokenize", WAV, "--checkpoint", "tok", "--batch-size", "-1"], "--batch-size"),
    "batch size text": (["transcribe", WAV, "--checkpoint", "tok", "--batch-size", "two"], "--batch-size"),
    "unknown device": (["whisper", WAV, "--device", "foo"], "--device"),
    "missing GPU": (["tokenize", WAV, "--checkpoint", "tok", "--device", "cuda:99"], "--device"),
    "unknown language": (["whisper", WAV, "--language", "xx"], "--language"),
    "unknown language name": (["transcribe", WAV, "--checkpoint", "tok", "--language", "klingon"], "--language"),
    "port 0": (["serve", "--checkpoint", "tok", "--port", "0"], "--port"),
    "port too high": (["serve", "--checkpoint", "tok", "--port", "70000"], "--port"),
    "body 0": (["serve", "--checkpoint", "tok", "--max-body-mb", "0"], "--max-body-mb"),
    "negative clip limit": (["serve", "--checkpoint", "tok", "--max-audio-seconds", "-5"], "--max-audio-seconds"),
    "server tokens 0": (["serve", "--checkpoint", "tok", "--max-new-tokens", "0"], "--max-new-tokens"),
    "negative queue": (["serve", "--checkpoint", "tok", "--max-waiting", "-1"], "--max-waiting"),
    "batch 0": (["serve", "--checkpoint", "tok", "--max-batch", "0"], "--max-batch"),
    "chat tokens 0": (["chat", "--checkpoint", "tok", "--max-new-tokens", "0"], "--max-new-tokens"),
    "negative temperature": (["chat", "--checkpoint", "tok", "--temperature", "-1"], "--temperature"),
    "nan temperature": (["chat", "--checkpoint", "tok", "--temperature", "nan"], "--temperature"),
}


@pytest.mark.parametrize("argv, flag", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_is_one_line_naming_its_flag_and_exit_2(capsys, argv, flag):
    code, out, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, flag)
    assert out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_to_use_the_cpu(capsys):
    code, _, err = run_main(capsys, "whisper", WAV, "--device", "cuda")
    assert_one_line_error(code, err, "--device")
    assert err.strip().endswith("argument --device: no CUDA GPU is available; use --device cpu")


def test_a_bad_argument_in_a_real_process_has_no_traceback():
    result = auralm("tokenize", WAV, "--checkpoint", "tok", "--batch-size", "0")
    assert result.returncode == 2
    assert result.stderr == "auralm tokenize: error: argument --batch-size: must be 1 or more, got 0\n"


DEVICE_COMMANDS = {  # each command that takes --device, and what else it needs to parse
    "whisper": [WAV], "tokenize": [WAV], "export": ["clips", "--out", "tokens"], "transcribe": [WAV], "chat": [],
    "serve": [], "demo-web": [], "eval": ["clips.jsonl"],
}  # fmt: skip


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_every_device_flag_defaults_to_auto_and_its_help_says_what_that_is(capsys, command):
    from auralm.apps.cli import build_parser

    code, out, _ = run_main(capsys, command, "--help")
    assert code == 0
    text = " ".join(out.split())  # the help's lines joined
    device_help = text[text.index(" --device ", text.index("options:")) :].split(" --")[1]
    assert "(default: auto = CUDA when present, else CPU" in device_help, device_help
    assert build_parser().parse_args([command, *DEVICE_COMMANDS[command]]).device == "auto"


def test_no_other_command_takes_a_device(capsys):
    from auralm.apps.cli import COMMANDS

    for command in set(COMMANDS) - set(DEVICE_COMMANDS):
        code, out, _ = run_main(capsys, command, "--help")
        assert code == 0 and "--device" not in out, command


@pytest.mark.integration
def test_a_negative_batch_size_never_runs_as_done(capsys, tokenizer_folder, tmp_path):
    out = tmp_path / "tokens.txt"
    code, _, err = run_main(
        capsys, "tokenize", WAV, "--checkpoint", str(tokenizer_folder), "--batch-size", "-1", "--output", str(out)
    )
    assert_one_line_error(code, err, "--batch-size")
    assert not out.exists()


def test_each_output_format_is_recognised_in_its_lines():
    from auralm.data.token_lines import FORMATS, format_line, line_format

    for fmt in FORMATS:
        for codes in ([12, 7, 431], []):
            line = format_line(Path("clips/a b.wav"), torch.tensor(codes, dtype=torch.long), 0.12, fmt)
            assert line_format(line) == fmt
    for line in ("", "no tab here", "a.wav\t12 x", "a.wav\t<|sound_start|><|sound_0001|>", '{"codes": []}', "{oops"):
        assert line_format(line) is None


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["string", "ids"])
def test_resuming_in_another_format_is_refused_and_the_file_kept(capsys, tokenizer_folder, tmp_path, fmt):
    out = tmp_path / "tokens.jsonl"
    held = json.dumps({"path": "other.wav", "seconds": 0.1, "codes": [1, 2, 3]}) + '\n{"path": "cut sh'
    out.write_text(held)
    code, _, err = run_main(
        capsys, "tokenize", WAV, "--checkpoint", str(tokenizer_folder), "--format", fmt, "--output", str(out)
    )
    assert_one_line_error(code, err, "--format jsonl")
    assert err.strip() == (
        f"auralm tokenize: error: {out} holds 'jsonl' lines; rerun with --format jsonl or choose another --output"
    )
    assert out.read_text() == held


def test_an_output_that_is_not_a_tokens_file_is_refused_and_kept(capsys, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    code, _, err = run_main(capsys, "tokenize", WAV, "--checkpoint", "tok", "--output", str(out))
    assert_one_line_error(code, err, "--output")
    assert "line 1 is not a line of sound tokens" in err
    assert out.read_text() == "my notes\n"


@pytest.mark.integration
def test_an_english_only_whisper_refuses_another_language(capsys):
    code, _, err = run_main(capsys, "whisper", str(DATA / "en_8k.wav"), "--language", "vi")
    assert_one_line_error(code, err, "--language vi")
    assert "English-only" in err
    code, out, _ = run_main(capsys, "whisper", str(DATA / "en_8k.wav"), "--language", "English")
    assert code == 0 and f"{DATA / 'en_8k.wav'} [en]: " in out  # a name is taken and shown as its code


def test_no_progress_bar_unless_stderr_is_a_terminal_or_asked(capsys):
    files = [str(DATA / "en_16k.wav"), str(DATA / "en_8k.wav")]
    code, _, err = run_main(capsys, "info", *files)  # capsys's stderr is no terminal
    assert code == 0
    assert err.startswith("2 of 2 files done") and "info:" not in err and "file/s" not in err
    code, _, err = run_main(capsys, "info", *files, "--progress")
    assert code == 0 and "info: 100%" in err


def test_a_reader_that_leaves_early_is_no_error():
    process = subprocess.Popen(
        [sys.executable, "-m", "auralm", "info", str(DATA / "en_16k.wav"), str(DATA / "en_8k.wav")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process.stdout.close()  # as `| head -0` would, long before the first line is written
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in process.stderr.read()


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from auralm.apps.cli import main\n"
        "for argv in (['--help'], ['--version'], ['tokenize', '--help'], ['chat', '--help'], ['serve', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print([m for m in ('torch', 'transformers', 'whisper') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("order", ["options first", "options last"])
def test_train_settings_reach_the_recipe_wherever_the_options_stand(capsys, order):
    options, settings = ["--threads", "1"], ["max_steps=abc"]
    argv = ["train", "tokenizer", *(options + settings if order == "options first" else settings + options)]
    code, _, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, "config key 'max_steps'")  # the setting reached the recipe's config
    code, _, err = run_main(capsys, "train", "tokenizer", "--threads", "1", "--bogus")
    assert_one_line_error(code, err, "unrecognized arguments: --bogus")
