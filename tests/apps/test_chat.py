"""`auralm chat`: one prompt or a session in a real process, the model flags it loads by, and the session's
commands and Ctrl-C on a tiny random Llama and speech tokenizer."""

import io
import subprocess
import sys
import threading

import pytest

from auralm.apps.chat import session
from auralm.apps.demo import QUESTION
from tests.apps.test_cli import auralm
from tests.conftest import DATA


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
    typed = "\n".join([
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
        input=typed, capture_output=True, text=True, timeout=300,
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


@pytest.mark.integration
def test_checkpoint_default_is_no_checkpoint_flag():
    """`--checkpoint default` names the shipped tokenizer, as no --checkpoint does: both load the shipped pair,
    adapter included (not SmolLM2 with fresh sound tokens), so both give the same answer."""
    ask = ("chat", "--audio", str(QUESTION), "--prompt", "Transcribe the speech.", "--max-new-tokens", "32")
    named, unnamed = auralm(*ask, "--checkpoint", "default"), auralm(*ask)
    for result in (named, unnamed):
        assert result.returncode == 0, result.stderr
        assert "untrained" not in result.stderr  # the shipped adapter's sound tokens, not fresh ones
    assert named.stdout.strip() and named.stdout == unnamed.stdout


# ---- the chat session, on a tiny random Llama and speech tokenizer ---------------------------------------


class InterruptedOnce(io.StringIO):
    """A terminal where Ctrl-C comes while the first piece of text is printed."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if text.strip() and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return written


def test_ctrl_c_during_a_reply_stops_it_and_the_session_goes_on(tiny_chat, capsys, monkeypatch):
    seen, closed, forwards = [], [], []
    stream = tiny_chat.stream

    def recorded(messages, **options):
        seen.append([dict(m) for m in messages])
        pieces = stream(messages, **options)
        close = pieces.close
        pieces.close = lambda: (closed.append(len(seen)), close())
        return pieces

    monkeypatch.setattr(tiny_chat, "stream", recorded)
    tiny_chat.model.register_forward_hook(lambda *_: forwards.append(len(seen)))
    threads = threading.active_count()
    stdout = InterruptedOnce()
    stdin = io.StringIO("hello what is this\nwhat is the cat ?\n")
    assert session(tiny_chat, stdin, stdout, max_new_tokens=400) == 0

    first_piece, second_reply = stdout.getvalue().split("\n")[:2]
    assert first_piece and second_reply  # the first reply was cut after one piece; the second was answered
    assert "(reply stopped)" in capsys.readouterr().err
    assert len(seen) == 2 and closed == [1]  # the stopped reply's stream was closed
    assert threading.active_count() == threads  # no generation left running
    assert forwards.count(1) < 400  # the first generation stopped early
    assert seen[1][:2] == [
        {"role": "user", "content": "hello what is this"},
        {"role": "assistant", "content": first_piece},
    ]


def test_audio_without_a_file_says_what_it_expects(tiny_chat, capsys):
    stdout = io.StringIO()
    assert session(tiny_chat, io.StringIO("/audio\n/audio   \n/exit\n"), stdout) == 0
    err = capsys.readouterr().err
    assert err.count("usage: /audio FILE") == 2
    assert stdout.getvalue() == ""
