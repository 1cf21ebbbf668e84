"""`auralm demo-web`: the speech models in the browser (Gradio), offline.

    auralm demo-web                        # the shipped models on http://127.0.0.1:7860
    app = build_app(SpeechChat.from_pretrained()); app.launch()

Tabs:
    Talk     speak through the microphone: when you pause, the LLM answers in text (and speech, with Piper
             installed); speaking over an answer stops it (auralm.apps.web_talk, over WebRTC with fastrtc).
    Tokens   upload or record a clip: its sound-token string, a picture of which code sits where on the
             waveform, the text Whisper's decoder reads from the tokens, and the codes to download
             (JSON and .npy).
    Chat     text and audio turns with the speech LLM, replies streamed, each turn's latency shown.
Bad input (no audio, an unreadable file, audio over the length limit) shows a message in the tab; the app
goes on. One request runs at a time, whichever tab it comes from: the models are shared.
"""

from __future__ import annotations

import colorsys
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr  # the demo extra: without it, importing this module says what to install
import numpy as np
from fastrtc import WebRTC

from auralm.apps.web_talk import TalkHandler
from auralm.errors import AuralmError
from auralm.lm import SpeechChat
from auralm.tokenizer import SAMPLE_RATE, load_audio
from auralm.tokenizer.audio import MAX_AUDIO_SECONDS

MAX_SECONDS = MAX_AUDIO_SECONDS  # longest clip the demo takes: the servers' limit
PICTURE_HEIGHT, WAVE_HEIGHT, PIXELS_PER_CODE, MIN_WIDTH, MAX_WIDTH = 160, 110, 16, 600, 1800


def build_app(chat: SpeechChat, max_seconds: float = MAX_SECONDS):
    """The Gradio app (gradio.Blocks) around one SpeechChat; `launch()` it."""
    outputs_dir = Path(tempfile.mkdtemp(prefix="auralm-demo-web-"))
    model_lock = threading.Lock()  # the Talk tab's replies run outside gradio's queue

    def tokenize(path: str | None):
        try:
            audio = _load(path, max_seconds)
        except AuralmError as e:
            return "", None, "", None, f"Error: {e}"
        speech = chat.speech_tokenizer
        with model_lock:
            started = time.perf_counter()
            codes = speech.encode(audio)
            took = time.perf_counter() - started
            text = speech.decode_text([codes], temperatures=(0.0,))[0]  # greedy: a clip always reads the same
        files = _code_files(codes.numpy(), outputs_dir / f"codes-{time.time_ns()}")
        seconds = len(audio) / SAMPLE_RATE
        status = f"{seconds:.1f} s of audio → {len(codes)} sound tokens in {took:.2f} s"
        return speech.to_string(codes), code_picture(audio.numpy(), codes.numpy()), text, files, status

    def send(text: str, path: str | None, history: list[dict], shown: list[dict]) -> Iterator[tuple]:
        """history: the conversation as SpeechChat takes it (clips as arrays); shown: as the Chatbot shows it."""
        if not text.strip() and not path:
            yield history, shown, "", path, "Error: type a message or add a clip."
            return
        try:
            audio = _load(path, max_seconds) if path else None
        except AuralmError as e:
            yield history, shown, text, None, f"Error: {e}"
            return
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text.strip() else []
        if audio is not None:
            content.append({"type": "audio", "array": audio, "sampling_rate": SAMPLE_RATE})
        history = [*history, {"role": "user", "content": content}]
        if audio is not None:
            text = f"{text.strip()} [a clip, {len(audio) / SAMPLE_RATE:.1f} s]"
        shown = [*shown, {"role": "user", "content": text.strip()}, {"role": "assistant", "content": ""}]
        with model_lock:
            started, first, reply = time.perf_counter(), None, ""
            try:
                pieces = chat.stream(history, max_new_tokens=256)
            except AuralmError as e:  # the conversation outgrew the LLM's context
                yield history[:-1], shown[:-2], text, None, f"Error: {e}"
                return
            for piece in pieces:
                first = first or time.perf_counter() - started
                reply += piece
                shown[-1] = {"role": "assistant", "content": reply}
                yield history, shown, "", None, "…"
        total = time.perf_counter() - started
        history = [*history, {"role": "assistant", "content": reply}]
        yield history, shown, "", None, f"latency: first words {first or total:.2f} s, whole reply {total:.2f} s"

    def clear():
        chat.forget()
        return [], [], "", None, ""

    return _layout(chat, model_lock, tokenize, send, clear).queue(default_concurrency_limit=1)


def _layout(chat: SpeechChat, model_lock: threading.Lock, tokenize: Callable, send: Callable, clear: Callable):
    """The page: the Talk, Tokens and Chat tabs wired to their handlers (gradio.Blocks)."""
    # The default theme's web font would be fetched from Google: the system's fonts keep the page offline.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    with gr.Blocks(title="auralm", theme=theme, analytics_enabled=False) as app:  # offline: no calling home
        gr.Markdown("# auralm\nA speech tokenizer and a speech LLM, running here, offline.")
        with gr.Tab("Talk"):
            gr.Markdown("Press Record and speak; pause, and the answer comes. Speak over it to stop it.")
            voice = WebRTC(
                label="Microphone", modality="audio", mode="send-receive", full_screen=False, elem_id="talk-voice"
            )
            talk_log = gr.Chatbot(type="messages", allow_tags=False, label="Conversation", elem_id="talk-log")
            voice.stream(TalkHandler(chat, model_lock), inputs=[voice], outputs=[voice])
            voice.on_additional_outputs(lambda shown: shown, outputs=[talk_log])
        with gr.Tab("Tokens"):
            clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="tokens-audio")
            run = gr.Button("Tokenize", variant="primary", elem_id="tokens-run")
            status = gr.Markdown(elem_id="tokens-status")
            tokens = gr.Textbox(label="Sound tokens", lines=3, max_lines=6, elem_id="tokens-string")
            picture = gr.Image(label="Codes over the waveform", elem_id="tokens-picture", interactive=False)
            heard = gr.Textbox(label="Text Whisper's decoder reads from the tokens", elem_id="tokens-text")
            files = gr.File(label="The codes (JSON, .npy)", file_count="multiple", elem_id="tokens-files")
            run.click(tokenize, inputs=clip, outputs=[tokens, picture, heard, files, status])
        with gr.Tab("Chat"):
            history = gr.State([])
            log = gr.Chatbot(type="messages", allow_tags=False, label="Conversation", elem_id="chat-log")
            message = gr.Textbox(label="Message", placeholder="Ask about the clip, or anything", elem_id="chat-text")
            attached = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="chat-audio")
            with gr.Row():
                ask = gr.Button("Send", variant="primary", elem_id="chat-send")
                reset = gr.Button("New conversation", elem_id="chat-reset")
            latency = gr.Markdown(elem_id="chat-latency")
            turn = [history, log, message, attached, latency]
            ask.click(send, inputs=[message, attached, history, log], outputs=turn)
            message.submit(send, inputs=[message, attached, history, log], outputs=turn)
            reset.click(clear, outputs=turn)
    return app


def code_picture(audio: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8: the waveform's envelope above a strip with a colour per code, each
    code under the stretch of audio it stands for (1 / 25 s at Ichigo's rate)."""
    width = int(np.clip(len(codes) * PIXELS_PER_CODE, MIN_WIDTH, MAX_WIDTH))
    picture = np.full((PICTURE_HEIGHT, width, 3), 255, np.uint8)
    columns = np.array_split(np.abs(audio), width) if len(audio) >= width else [np.zeros(1)] * width
    peaks = np.array([c.max(initial=0.0) for c in columns])
    peaks = peaks / max(peaks.max(), 1e-6)
    middle = WAVE_HEIGHT // 2
    for x, peak in enumerate(peaks):
        half = max(1, int(peak * (middle - 4)))
        picture[middle - half : middle + half, x] = (70, 110, 170)
    edges = np.linspace(0, width, len(codes) + 1).astype(int)
    for code, left, right in zip(codes, edges[:-1], edges[1:], strict=True):
        hue = (int(code) * 0.61803398875) % 1.0  # golden-ratio hues: neighbouring codes look apart
        picture[WAVE_HEIGHT + 8 :, left : max(right - 1, left + 1)] = [
            int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.65, 0.9)
        ]
    return picture


def _load(path: str | None, max_seconds: float):
    """A clip the user gave as (samples,) float32 at 16 kHz; AuralmError says what is wrong with it."""
    if not path:
        raise AuralmError("No audio: upload or record a clip first.")
    return load_audio(path, max_seconds=max_seconds, name=Path(path).name)


def _code_files(codes: np.ndarray, stem: Path) -> list[str]:
    """The codes as JSON (a list) and as .npy (int16), for download."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(codes.tolist()))
    np.save(stem.with_suffix(".npy"), codes.astype(np.int16))
    return [str(stem.with_suffix(".json")), str(stem.with_suffix(".npy"))]
