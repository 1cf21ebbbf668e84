"""The web demo's Talk handler (fastrtc's ReplyOnPause around a SpeechChat), fed real speech as a browser sends
it: 48 kHz int16 frames of 20 ms, each followed by an `emit` call as fastrtc's loop makes them. A tiny random
LLM answers: what is tested is when replies start and stop, not what they say."""

import asyncio
import threading

import fastrtc
import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from auralm.apps.web_talk import INPUT_RATE, PIPER_RATE, LoudnessVAD, TalkHandler
from auralm.data.voices import piper_available
from auralm.lm.replies import ReplyStream
from auralm.tokenizer import SAMPLE_RATE, load_audio
from tests.conftest import DATA

FRAME = INPUT_RATE // 50  # 20 ms, as WebRTC sends


def at_48k(path) -> np.ndarray:
    """A recording as the microphone track carries it: (N,) int16 at 48 kHz."""
    audio = AF.resample(load_audio(path), SAMPLE_RATE, INPUT_RATE)
    return (audio.clamp(-1, 1) * 32767).to(torch.int16).numpy()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * INPUT_RATE), np.int16)


class Call:
    """A handler on a simulated connection: every frame is received, then emit is called once."""

    def __init__(self, chat, **options):
        self.handler = TalkHandler(chat, **{"speak": False} | options)
        # What a WebRTC connection wires in: its output queue's clearing, and the event loop of its messages.
        self.handler._clear_queue = lambda: None
        self.handler._loop = asyncio.new_event_loop()
        threading.Thread(target=self.handler._loop.run_forever, daemon=True).start()
        self.forwards = 0  # the LLM's forward passes: generation steps
        chat.model.register_forward_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        self.shown: list[list[dict]] = []  # every conversation the page was sent
        self.spoken: list[tuple[int, np.ndarray]] = []  # the replies' speech
        self.frames = 0

    def say(self, audio: np.ndarray, until=None) -> None:
        """Send `audio` frame by frame; stop early once `until()` holds."""
        for start in range(0, len(audio), FRAME):
            self.handler.receive((INPUT_RATE, audio[start : start + FRAME].reshape(1, -1)))
            self.frames += 1
            self.keep(self.handler.emit())
            if until and until():
                return

    def finish(self) -> None:
        """Let the reply in progress run to its end (fastrtc keeps calling emit)."""
        while self.handler.event.is_set():
            self.keep(self.handler.emit())

    def keep(self, output) -> None:
        if isinstance(output, fastrtc.AdditionalOutputs):
            self.shown.append(output.args[0])
        elif output is not None:
            self.spoken.append(output)


def test_the_loudness_detector_finds_speech_and_not_silence():
    speech = at_48k(DATA / "en_48k.opus")
    seconds, runs = LoudnessVAD().vad((INPUT_RATE, np.concatenate([silence(1.0), speech, silence(1.0)])))
    assert 0.6 * len(speech) / INPUT_RATE < seconds <= len(speech) / INPUT_RATE
    assert runs[0]["start"] >= INPUT_RATE and runs[-1]["end"] <= INPUT_RATE + len(speech)
    assert LoudnessVAD().vad((INPUT_RATE, silence(1.0)))[0] == 0.0


def test_it_answers_after_the_pause_and_not_before(tiny_chat):
    speech = at_48k(DATA / "en_48k.opus")
    call = Call(tiny_chat, max_new_tokens=12)
    call.say(np.concatenate([silence(0.5), speech]))
    assert call.shown == [] and call.forwards == 0  # still talking: no reply yet

    call.say(silence(1.5))
    call.finish()
    heard = call.handler.history[0]["content"][0]["array"]
    assert abs(len(heard) / SAMPLE_RATE - len(speech) / INPUT_RATE) < 0.7  # the whole utterance, little silence
    reply = tiny_chat.reply(call.handler.history[:1], max_new_tokens=12).text
    assert call.handler.history[1] == {"role": "assistant", "content": reply}
    assert call.shown[-1][-2]["role"] == "user" and call.shown[-1][-1] == {"role": "assistant", "content": reply}
    assert len(call.shown) > 2  # the reply streamed in pieces


def test_a_word_begun_late_in_a_detection_chunk_is_heard_from_its_start(tiny_chat):
    speech = at_48k(DATA / "en_48k.opus")
    call = Call(tiny_chat, max_new_tokens=4)
    call.say(np.concatenate([silence(0.5), speech, silence(1.5)]))  # 0.1 s of speech in the first 0.6 s chunk
    call.finish()
    heard = call.handler.history[0]["content"][0]["array"].numpy()
    said = LoudnessVAD().vad((INPUT_RATE, speech))[0]
    assert LoudnessVAD().vad((SAMPLE_RATE, heard))[0] == pytest.approx(said, abs=0.04)  # 0.12 s short without


def test_speaking_during_a_reply_stops_it_and_the_new_utterance_is_answered_whole(tiny_chat):
    first, second = at_48k(DATA / "en_48k.opus"), at_48k(DATA / "en_48k.opus")[: INPUT_RATE * 2]
    tiny_chat.model.config.max_position_embeddings = 1024  # room for the second turn's 400 new tokens
    call = Call(tiny_chat, max_new_tokens=400)
    call.say(np.concatenate([first, silence(1.5)]))
    assert call.handler.state.responding and call.forwards > 0  # the first reply is being generated

    started = call.frames
    call.say(second, until=lambda: call.handler.history[-1]["role"] == "assistant")
    said = (call.frames - started) * FRAME
    assert said / INPUT_RATE < 1.3  # barge-in within about two VAD windows of the new speech, not at its end
    first_reply = call.handler.history[1]["content"]
    assert call.shown[-1][-1]["content"] == first_reply + " …(interrupted)"
    forwards = call.forwards
    call.say(second[said:])  # the rest of the second utterance
    assert call.forwards == forwards and forwards < 400  # the generation stopped, not only the text

    call.say(silence(1.5))
    call.finish()
    heard = call.handler.history[2]["content"][0]["array"]
    speech_heard = LoudnessVAD().vad((SAMPLE_RATE, heard.numpy()))[0]
    assert speech_heard > 0.9 * LoudnessVAD().vad((INPUT_RATE, second))[0]  # its start, said during the reply, too
    assert [m["role"] for m in call.handler.history] == ["user", "assistant", "user", "assistant"]
    assert not call.shown[-1][-1]["content"].endswith("(interrupted)")


def test_a_reply_comes_after_max_speech_seconds_without_a_pause(tiny_chat):
    speech = at_48k(DATA.parent.parent / "auralm" / "samples" / "speech_en.flac")[: INPUT_RATE * 8]  # no pause
    call = Call(tiny_chat, max_new_tokens=400, max_speech_seconds=3.0)
    call.say(speech, until=lambda: call.forwards > 0)
    assert call.frames * FRAME / INPUT_RATE < 3.0 + 1.3  # the turn was cut at about 3 s, while still talking
    heard = call.handler.history[0]["content"][0]["array"]
    assert 3.0 <= len(heard) / SAMPLE_RATE < 3.7

    forwards = call.forwards
    call.say(speech[call.frames * FRAME :][: INPUT_RATE * 2])  # talking on (under the limit) does not stop it
    assert call.forwards > forwards and len(call.handler.history) == 1


@pytest.mark.skipif(not piper_available(), reason="spoken replies need Piper and its voice: the train extra")
def test_with_piper_the_reply_is_also_spoken_sentence_by_sentence(tiny_chat, monkeypatch):
    def said(*args, **kwargs):  # the LLM's pieces, the second sentence in two
        yield from ["Paris is the capital. ", "It is in France", "."]

    monkeypatch.setattr(tiny_chat, "stream", lambda *args, **kwargs: ReplyStream(said()))
    call = Call(tiny_chat, speak=True)
    call.say(np.concatenate([at_48k(DATA / "en_48k.opus"), silence(1.5)]))
    call.finish()
    assert call.handler.history[1]["content"] == "Paris is the capital. It is in France."
    assert [rate for rate, _ in call.spoken] == [PIPER_RATE, PIPER_RATE]  # one reading per sentence
    first, second = (speech.reshape(-1) for _, speech in call.spoken)
    assert first.dtype == np.int16 and LoudnessVAD().vad((PIPER_RATE, first))[0] > 0.5
    assert LoudnessVAD().vad((PIPER_RATE, second))[0] > 0.5
