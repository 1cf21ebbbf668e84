"""The web demo's Talk tab: speak to the speech LLM through the microphone (WebRTC, fastrtc), hear and read
its answer.

    handler = TalkHandler(chat)     # one per browser connection: fastrtc copies it
    webrtc.stream(handler, inputs=[webrtc], outputs=[webrtc])
    webrtc.on_additional_outputs(lambda shown: shown, outputs=[chatbot])

A turn ends when the speaker pauses (fastrtc's ReplyOnPause, with a loudness detector in place of its Silero
model, whose weights it would download). The utterance is tokenized, and the reply streams back as text into
the conversation, and as speech, sentence by sentence, when Piper and its voice are installed (the `train`
extra). Three rules fastrtc does not keep the way a talk needs:
- barge-in: speech that starts while a reply is being generated stops that generation at once, and the new
  utterance is answered whole once it ends (fastrtc would stop the reply only when the new utterance ended);
- a turn is cut after `max_speech_seconds` of speech without a pause, so a noisy room that never seems to
  pause still gets answers; speech that goes on after the cut does not stop that answer;
- a word begun late in a detection chunk is heard from its start (fastrtc drops a chunk with too little
  speech to start a turn; it is kept as a pre-roll).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from fastrtc import AdditionalOutputs, AlgoOptions, ReplyOnPause

from auralm.errors import AuralmError
from auralm.lm import SpeechChat
from auralm.tokenizer import SAMPLE_RATE, load_audio

INPUT_RATE = 48_000  # WebRTC's Opus audio arrives at 48 kHz
MAX_SPEECH_SECONDS = 30.0  # a turn is cut here even without a pause
MIN_SPEECH_SECONDS = 0.3  # shorter sounds (a click, a cough) get no reply
PIPER_RATE = 22_050  # the packaged Piper voice's rate: spoken replies come at it
SPEECH_DBFS = -45.0  # browsers' noise suppression keeps a quiet room's microphone far below this
VAD_FRAME_SECONDS = 0.02
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class LoudnessVAD:
    """fastrtc's PauseDetectionModel by loudness: 20 ms frames louder than `threshold_db` (dBFS) are speech.
    Offline and instant; it takes any loud sound for speech, so it wants a quiet room (or the browser's noise
    suppression, on by default)."""

    def __init__(self, threshold_db: float = SPEECH_DBFS, frame_seconds: float = VAD_FRAME_SECONDS):
        self.threshold_db, self.frame_seconds = threshold_db, frame_seconds

    def warmup(self) -> None:
        """Nothing to load."""

    def vad(self, audio: tuple[int, np.ndarray], options: Any = None) -> tuple[float, list[dict[str, int]]]:
        """audio: (rate, samples (N,) or (1, N), int16 or float). Returns the seconds of speech in it and the
        speech runs as {"start", "end"} sample offsets."""
        rate, samples = audio
        samples = np.asarray(samples).reshape(-1)
        scale = 32768.0 if samples.dtype == np.int16 else 1.0
        frame = max(1, int(rate * self.frame_seconds))
        frames = samples[: len(samples) // frame * frame].astype(np.float32).reshape(-1, frame) / scale
        loud = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12) > self.threshold_db
        edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
        runs = [{"start": int(a) * frame, "end": int(b) * frame} for a, b in zip(edges[::2], edges[1::2], strict=True)]
        return float(loud.sum()) * frame / rate, runs


class TalkHandler(ReplyOnPause):
    """One browser connection's spoken conversation with `chat`.

    Replies are generated under `lock` (shared with the app's other tabs: one model, one request at a time).
    `history` is the conversation as SpeechChat takes it; `shown` is the same for a gradio Chatbot
    (type="messages"), sent to the page as AdditionalOutputs after every piece of a reply.
    """

    def __init__(
        self,
        chat: SpeechChat,
        lock: AbstractContextManager | None = None,
        max_speech_seconds: float = MAX_SPEECH_SECONDS,
        max_new_tokens: int = 256,
        speak: bool | None = None,
    ):
        from auralm.data.voices import piper_available

        self.chat, self.lock = chat, lock or nullcontext()
        self.max_speech_seconds, self.max_new_tokens = max_speech_seconds, max_new_tokens
        self.speak = piper_available() if speak is None else speak
        self.history: list[dict[str, Any]] = []
        self.shown: list[dict[str, str]] = []
        self.barge_in = threading.Event()  # set: the reply being generated must stop
        self.cut_turn = False  # the last turn was cut for length: speech going on is not a barge-in
        self.pre_roll: np.ndarray | None = None  # the last chunk heard before speech began
        super().__init__(
            self.answer,
            algo_options=AlgoOptions(),
            can_interrupt=True,
            input_sample_rate=INPUT_RATE,
            output_sample_rate=PIPER_RATE,
            model=LoudnessVAD(),
        )

    def copy(self) -> TalkHandler:
        return TalkHandler(self.chat, self.lock, self.max_speech_seconds, self.max_new_tokens, self.speak)

    def determine_pause(self, audio: np.ndarray, sampling_rate: int, state: Any) -> bool:
        """fastrtc's pause detection on one chunk (when `audio` has grown to one). A chunk with too little speech
        to start a turn is dropped there; kept here as the pre-roll, it is put back before the chunk that does
        start one, so a word begun late in a chunk is heard from its start."""
        analysed = len(audio) >= self.algo_options.audio_chunk_duration * sampling_rate
        started = state.started_talking
        pause = super().determine_pause(audio, sampling_rate, state)
        if analysed:
            if state.started_talking and not started and self.pre_roll is not None:
                state.stream = np.concatenate((self.pre_roll, state.stream))
            self.pre_roll = None if state.started_talking else audio
        return pause

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        """One frame from the microphone: (rate, int16 samples (1, N))."""
        super().receive(frame)
        state = self.state
        if state.pause_detected:
            self.cut_turn = False
        elif state.started_talking and state.stream is not None:
            if len(state.stream) >= self.max_speech_seconds * state.sampling_rate:  # cut the turn: reply now
                state.pause_detected, self.cut_turn = True, True
                self.barge_in.set()  # a reply still running gives way to the new one
                self.event.set()
            elif state.responding and not self.cut_turn:
                self.barge_in.set()

    def _close_generator(self) -> None:
        """fastrtc's interruption (the new utterance has ended). A reply running in fastrtc's emit thread cannot
        be closed from this one: the flag stops it at its next piece."""
        self.barge_in.set()
        super()._close_generator()

    def reset(self) -> None:
        """After a reply ends; a reply stopped by barge-in keeps the new utterance heard so far."""
        speaking = self.state if self.barge_in.is_set() and self.state.started_talking else None
        super().reset()
        self.barge_in.clear()
        if speaking is not None:
            speaking.responding = False
            self.state = speaking
            if speaking.pause_detected:  # it ended already: answer it
                self.event.set()

    def answer(self, audio: tuple[int, np.ndarray]) -> Iterator[Any]:
        """ReplyOnPause's reply function: the utterance (rate, int16 (1, N)) → AdditionalOutputs(shown) as the
        reply grows, and (rate, int16 (1, M)) speech when speaking."""
        self.barge_in.clear()
        rate, samples = audio
        try:
            clip = load_audio(samples.reshape(-1), sample_rate=rate, name="the microphone")
        except AuralmError as e:
            yield AdditionalOutputs([*self.shown, {"role": "assistant", "content": f"Error: {e}"}])
            return
        seconds = len(clip) / SAMPLE_RATE
        if seconds < MIN_SPEECH_SECONDS:
            return
        self.history.append(
            {"role": "user", "content": [{"type": "audio", "array": clip, "sampling_rate": SAMPLE_RATE}]}
        )
        self.shown += [{"role": "user", "content": f"[spoken, {seconds:.1f} s]"}, {"role": "assistant", "content": ""}]
        reply, unspoken = "", ""
        with self.lock:
            try:
                pieces = self.chat.stream(self.history, max_new_tokens=self.max_new_tokens)
            except AuralmError as e:  # the conversation outgrew the LLM's context: shown, and left out
                self.history.pop()
                self.shown[-1] = {"role": "assistant", "content": f"Error: {e}"}
                yield AdditionalOutputs(list(self.shown))
                return
            try:
                for piece in pieces:
                    if self.barge_in.is_set():
                        break
                    reply += piece
                    self.shown[-1] = {"role": "assistant", "content": reply}
                    yield AdditionalOutputs(list(self.shown))
                    if self.speak:
                        *sentences, unspoken = SENTENCE_END.split(unspoken + piece)
                        yield from filter(None, map(piper_reading, sentences))
            finally:  # barge-in, a closed connection or the reply's end: the generation stops here
                pieces.close()
                stopped = self.barge_in.is_set()
                self.history.append({"role": "assistant", "content": reply})
                self.shown[-1] = {"role": "assistant", "content": reply + (" …(interrupted)" if stopped else "")}
        yield AdditionalOutputs(list(self.shown))
        if self.speak and not self.barge_in.is_set():
            yield from filter(None, [piper_reading(unspoken)])


def piper_reading(text: str) -> tuple[int, np.ndarray] | None:
    """`text` read by the packaged Piper voice: (rate, int16 (1, N)); None for text with nothing to say ("…")."""
    from auralm.data.voices import piper_speech

    if not any(c.isalnum() for c in text):
        return None
    audio, rate = piper_speech(text, length_scale=1.0, noise_scale=0.667, noise_w_scale=0.8, seed=0)
    return rate, (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
