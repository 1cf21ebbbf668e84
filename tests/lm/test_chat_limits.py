"""SpeechChat's limits, the servers' and the command's (issue 25): silence answered as silence without the LLM,
clips over max_audio_seconds refused, a prompt beyond the LLM's context refused before anything is generated."""

import dataclasses

import numpy as np
import pytest
import soundfile
import torch

from auralm.lm import ContextLengthError
from auralm.lm.replies import Reply
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

    speech = array(torch.cat([load_audio(DATA / "en_slow_22k.flac")] * 4))  # one 23 s window: 588 sound tokens
    with pytest.raises(ContextLengthError, match=r"the prompt is 5\d\d tokens, over the 256 this LLM takes"):
        tiny_chat.reply(asked(speech))
    with pytest.raises(ContextLengthError, match=r"its context: 512"):
        tiny_chat.stream([{"role": "user", "content": "hello"}], max_new_tokens=600)
    assert forwards == []


def test_a_clip_longer_than_the_window_is_answered_window_by_window(tiny_whisper):
    """Issue 25: a clip longer than what the speech LLM hears whole is answered in turn, one window at a time."""
    from auralm.lm import SpeechChat, add_sound_tokens
    from auralm.tokenizer import SpeechTokenizer
    from tests.conftest import TINY_CONFIG, randomize
    from tests.lm.conftest import tiny_llama, tiny_text_tokenizer

    speech = SpeechTokenizer(dataclasses.replace(TINY_CONFIG, window_seconds=2), tiny_whisper)
    randomize(speech.bottleneck, seed=1)
    model, text = tiny_llama(tied=True, initializer_range=1.0), tiny_text_tokenizer()
    add_sound_tokens(model, text, speech)
    chat = SpeechChat(model, text, speech.eval())
    audio = load_audio(DATA / "de_16k.flac")  # 5.9 s: three windows of at most 2 s
    pieces = [audio[w.start : w.end] for w in speech.windows(audio)]
    assert len(pieces) >= 3

    each = [chat.reply(asked(array(piece)), max_new_tokens=3) for piece in pieces]
    whole = chat.reply(asked(array(audio)), max_new_tokens=3)
    assert whole.text == " ".join(reply.text for reply in each)
    assert whole.completion_tokens == sum(reply.completion_tokens for reply in each)
    stream = chat.stream(asked(array(audio)), max_new_tokens=3)
    assert "".join(stream) == whole.text and stream.reply == whole
    short = asked({"type": "audio", "path": DATA / "en_16k.wav"})
    assert chat.generate([asked(array(audio)), short], max_new_tokens=3) == [
        whole.text, chat.generate(short, max_new_tokens=3)
    ]  # fmt: skip
    transcripts = [chat.transcribe(array(piece), max_new_tokens=3) for piece in pieces]
    assert chat.transcribe(array(audio), max_new_tokens=3) == " ".join(transcripts)
    with pytest.raises(AudioError, match="2 clips over 2 s in one message"):
        chat.reply([{"role": "user", "content": [array(audio), array(audio)]}])


def test_a_transcription_that_loops_is_decoded_again_without_repeating_itself(tiny_chat):
    """Whisper's guard (issue 24): text compressing over 2.4 has looped; decoded again it repeats no 4 tokens."""
    from whisper.utils import compression_ratio

    from auralm.lm.chat import NO_REPEAT_WORDS
    from auralm.tokenizer.backbone import LOOPED_COMPRESSION_RATIO

    clip = {"type": "audio", "path": DATA / "en_16k.wav"}
    asked_for_words = [{"role": "user", "content": [clip, {"type": "text", "text": "Transcribe the speech."}]}]
    greedy = tiny_chat.generate(asked_for_words, max_new_tokens=200)
    assert compression_ratio(greedy) > LOOPED_COMPRESSION_RATIO  # the tiny random LLM loops
    text = tiny_chat.transcribe(clip, max_new_tokens=200)
    prompt = torch.tensor([tiny_chat.prompt_ids(asked_for_words)])
    again = tiny_chat.model.generate(prompt, do_sample=False, max_new_tokens=200, no_repeat_ngram_size=NO_REPEAT_WORDS,
                                     pad_token_id=tiny_chat.tokenizer.pad_token_id)  # fmt: skip
    assert text == tiny_chat.tokenizer.decode(again[0, prompt.shape[1] :], skip_special_tokens=True) != greedy


def test_a_transcription_can_be_requested_before_the_clip(tiny_chat):
    clip = {"type": "audio", "path": DATA / "en_16k.wav"}
    request = {"type": "text", "text": "Transcribe the speech."}
    before, after = ([{"role": "user", "content": parts}] for parts in ([request, clip], [clip, request]))
    replies = [tiny_chat.generate(m, max_new_tokens=5) for m in (before, after)]
    assert replies[0] != replies[1]  # the tiny LLM tells the orders apart
    assert tiny_chat.transcribe(clip, max_new_tokens=5, request_first=True) == replies[0]
    assert tiny_chat.transcribe(clip, max_new_tokens=5) == replies[1]
