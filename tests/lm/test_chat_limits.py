"""SpeechChat's limits, the servers' and the command's (issue 25): silence answered as silence without the LLM,
clips over max_audio_seconds refused, a prompt beyond the LLM's context refused before anything is generated."""

import numpy as np
import pytest
import soundfile
import torch

from auralm.lm import ContextLengthError
from auralm.lm.chat import Reply
from auralm.tokenizer import SAMPLE_RATE, AudioError, load_audio
from auralm.tokenizer.token_format import NO_SPEECH_REPLY
from tests.conftest import DATA


def asked(part: dict) -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": "what is this sound ?"}]}]


def array(audio: torch.Tensor) -> dict:
    return {"type": "audio", "array": audio, "sampling_rate": SAMPLE_RATE}


@pytest.fixture
def forwards(tiny_chat) -> list[int]:
    """The tiny LLM's forward passes."""
    calls: list[int] = []
    tiny_chat.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_a_silent_clip_is_answered_as_unheard_without_the_llm(tiny_chat, forwards, tmp_path):
    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, np.random.default_rng(0).normal(0, 10**-3.5, 3 * SAMPLE_RATE), SAMPLE_RATE)  # −70 dBFS
    silent = [array(torch.zeros(3 * SAMPLE_RATE)), {"type": "audio", "path": quiet}]
    for part in silent:
        assert tiny_chat.reply(asked(part)) == Reply(NO_SPEECH_REPLY, "stop", 0, 0)
        stream = tiny_chat.stream(asked(part))
        assert list(stream) == [NO_SPEECH_REPLY] and stream.reply == Reply(NO_SPEECH_REPLY, "stop", 0, 0)
        assert tiny_chat.transcribe(part) == ""
    assert forwards == []

    speech = {"type": "audio", "path": DATA / "en_8k.wav"}
    replies = tiny_chat.generate([asked(silent[0]), asked(speech)], max_new_tokens=4)
    assert replies == [NO_SPEECH_REPLY, tiny_chat.generate(asked(speech), max_new_tokens=4)]
    forwards.clear()  # a text turn after the silent one is the LLM's again
    turns = [*asked(silent[0]), {"role": "assistant", "content": NO_SPEECH_REPLY}, {"role": "user", "content": "hello"}]
    tiny_chat.generate(turns, max_new_tokens=2)
    assert forwards


def test_long_clips_and_prompts_beyond_the_context_are_refused_before_anything_runs(tiny_chat, forwards, tmp_path):
    with pytest.raises(AudioError, match=r"301 s long, over the 300 s limit"):
        tiny_chat.reply(asked(array(torch.zeros(301 * SAMPLE_RATE))))
    long_file = tmp_path / "long.flac"
    soundfile.write(long_file, np.zeros(400 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match=rf"{long_file}: 400 s long, over the 300 s limit"):
        tiny_chat.stream(asked({"type": "audio", "path": long_file}))
    tiny_chat.max_audio_seconds = 500
    assert tiny_chat.generate(asked({"type": "audio", "path": long_file})) == NO_SPEECH_REPLY

    speech = array(torch.cat([load_audio(DATA / "en_slow_22k.flac")] * 7))  # 1,025 sound tokens; 512 positions
    with pytest.raises(ContextLengthError, match=r"the prompt is 1,0\d\d tokens, over the 256 this LLM takes"):
        tiny_chat.reply(asked(speech))
    with pytest.raises(ContextLengthError, match=r"its context: 512"):
        tiny_chat.stream([{"role": "user", "content": "hello"}], max_new_tokens=600)
    assert forwards == []
