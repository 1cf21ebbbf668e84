"""The real server on localhost, driven by the official `openai` client and by malformed requests.

Two servers: `auralm serve` in a subprocess on the shipped speech models (integration), and the same app in a
thread on tiny random models, whose numbers (token counts, segments) the tests can check exactly.
"""

import base64
import functools
import io
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile
import torch

import auralm.apps.server
import auralm.apps.transcription
import auralm.lm.messages
import auralm.tokenizer.speech_tokenizer
from auralm.apps.demo import QUESTION as QUESTION_CLIP
from auralm.apps.demo import SAMPLES
from auralm.apps.server import ServerLimits, create_app
from auralm.lm import SpeechChat, add_sound_tokens
from auralm.tokenizer import SAMPLE_RATE, corpus_word_error_rate, load_audio, transcribe
from auralm.tokenizer.token_format import NO_SPEECH_REPLY, TRANSCRIBE_PROMPT
from tests.apps.conftest import running
from tests.conftest import DATA
from tests.lm.conftest import tiny_llama, tiny_text_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    """The log file of an `auralm serve` subprocess with no model flags (the shipped speech models), and the
    address it says it listens on."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "auralm", "serve", "--port", str(free_port()),
             "--max-audio-seconds", "5", "--max-body-mb", "1", "--max-new-tokens", "64"],
            stdout=output, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    deadline = time.time() + 180
    while not (found := re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start: {log.read_text()}")
        time.sleep(0.2)
    yield log, found.group(1)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(server_log):
    return server_log[1]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def wav_part(name: str = "en_8k.wav", folder: Path = DATA) -> dict:
    data = base64.b64encode((folder / name).read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": name.rsplit(".", 1)[1]}}


def audio_url_part(name: str = "en_8k.wav") -> dict:
    data = base64.b64encode((DATA / name).read_bytes()).decode()
    return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}}


QUESTION = [{"role": "user", "content": [wav_part(QUESTION_CLIP.name, SAMPLES)]}]  # "Please count from one to nine."


def post(server: str, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{server}{path}", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def chat_body(content, **options) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}], **options}).encode()


# ---- auralm serve, SmolLM2 -----------------------------------------------------------------


@pytest.mark.integration
def test_models_and_chat_with_audio(client):
    assert [m.id for m in client.models.list().data] == ["smollm2", "whisper-1", "auralm-tokens"]
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40)
    # the shipped models' own answer to the spoken question, asked here without the server
    spoken = [{"role": "user", "content": [{"type": "audio", "path": QUESTION_CLIP}]}]
    assert reply.choices[0].message.content == SpeechChat.from_pretrained(device="cpu").generate(
        spoken, max_new_tokens=40
    )
    assert reply.model == "smollm2"


@pytest.mark.integration
def test_a_transcription_request_before_the_clip_is_transcribed(client):
    """Issue 25: OpenAI clients put the text first; the shipped models transcribe the demo's test-split question
    (a voice and a sentence no training saw) rather than answer it."""
    said = json.loads((SAMPLES / "texts.json").read_text())[QUESTION_CLIP.name]
    request = [{"role": "user", "content": [{"type": "text", "text": TRANSCRIBE_PROMPT}, *QUESTION[0]["content"]]}]
    reply = client.chat.completions.create(model="smollm2", messages=request, max_tokens=40)
    assert corpus_word_error_rate([said], [reply.choices[0].message.content]) <= 0.5, reply


@pytest.mark.integration
def test_streaming_gives_the_same_text(client):
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40).choices[0].message.content
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces) == whole and len(pieces) > 2


@pytest.mark.integration
def test_a_client_that_hangs_up_mid_stream_frees_the_model(client):
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=64, stream=True)
    next(iter(stream))
    stream.close()  # the server ends that generation and takes the next request
    # a budget past the heard line, which counts in max_tokens as a reasoning model's thoughts do
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24, timeout=60)
    assert reply.choices[0].message.content


@pytest.mark.integration
def test_transcription_endpoint(client):
    with open(DATA / "en_8k.wav", "rb") as f:
        result = client.audio.transcriptions.create(model="smollm2", file=f)
    assert isinstance(result.text, str) and result.text


@pytest.mark.integration
def test_the_server_says_where_it_listens_and_logs_each_request(server_log, client):
    log, url = server_log
    client.models.list()
    lines = log.read_text().splitlines()
    assert sum(f"listening on {url}" in line for line in lines) == 1
    assert any(re.search(r"GET /v1/models 200 \d+ ms$", line) for line in lines)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"messages": "hello"}).encode(), 400, "non-empty list"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
        (chat_body([{"type": "video"}]), 400, "unsupported part type 'video'"),
        (chat_body([{"type": "input_audio", "input_audio": {"data": "%%%not base64"}}]), 400, "not valid base64"),
        (
            chat_body([{"type": "input_audio", "input_audio": {"data": base64.b64encode(b"no audio" * 20).decode()}}]),
            400,
            "not a readable audio file",
        ),
        (chat_body([wav_part("en_slow_22k.flac")]), 400, "over the 5 s limit"),
        (chat_body("hi", max_tokens=100000), 400, "max_tokens"),
        (chat_body("hi", temperature="hot"), 400, "temperature"),
        (chat_body("x" * 2_000_000), 413, "request body over"),
    ],
    ids=[
        "json",
        "not-object",
        "messages-type",
        "role",
        "part-type",
        "base64",
        "not-audio",
        "too-long",
        "max-tokens",
        "temperature",
        "body-size",
    ],
)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, client, body, status, message):
    code, error = post(server, "/v1/chat/completions", body)
    assert code == status
    assert message in error["error"]["message"] and error["error"]["type"]
    assert client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    ).choices


@pytest.mark.integration
def test_transcription_without_a_file_is_a_400(server):
    code, error = post(server, "/v1/audio/transcriptions", b"--x--\r\n", "multipart/form-data; boundary=x")
    assert code == 400 and "file" in error["error"]["message"]


# ---- the same app in a thread, tiny random models ------------------------------------------


@pytest.fixture
def tiny_chat(tiny_tokenizer):
    model, text = tiny_llama(False), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    return SpeechChat(model, text, tiny_tokenizer)


@pytest.fixture
def tiny_server(tiny_chat):
    app = create_app(tiny_chat, "tiny", ServerLimits(max_audio_seconds=60, max_new_tokens=16))
    with running(app) as url:
        yield url


@pytest.fixture
def tiny_client(tiny_server):
    return openai.OpenAI(base_url=f"{tiny_server}/v1", api_key="unused", max_retries=0)


SOUND_QUESTION = [{"role": "user", "content": [wav_part(), {"type": "text", "text": "what is this sound ?"}]}]


def test_finish_reason_and_usage_are_the_real_ones(tiny_client, tiny_chat):
    tiny_chat.model.generation_config.eos_token_id = None  # only max_tokens or a stop string ends a reply
    audio = {"type": "audio", "path": DATA / "en_8k.wav"}
    local = [{"role": "user", "content": [audio, {"type": "text", "text": "what is this sound ?"}]}]
    prompt_tokens = len(tiny_chat.prompt_ids(local))  # sound tokens included
    assert prompt_tokens > 50
    cut = tiny_client.chat.completions.create(model="tiny", messages=SOUND_QUESTION, max_tokens=8)
    assert cut.choices[0].finish_reason == "length" and cut.model == "tiny"
    usage = cut.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt_tokens, 8, prompt_tokens + 8)

    text = cut.choices[0].message.content
    stop = text.split()[2]
    stopped = tiny_client.chat.completions.create(model="tiny", messages=SOUND_QUESTION, max_tokens=8, stop=[stop])
    assert stopped.choices[0].message.content == text[: text.find(stop)]
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens < 8

    stream = tiny_client.chat.completions.create(
        model="tiny", messages=SOUND_QUESTION, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == usage
    assert all(c.usage is None for c in chunks[:-1])


def test_a_request_gets_one_reply_of_the_served_model_or_a_clear_error(tiny_server, tiny_client):
    code, error = post(tiny_server, "/v1/chat/completions", chat_body("hello", n=2))
    assert code == 400 and error["error"]["param"] == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        tiny_client.chat.completions.create(model="gpt-4o", messages=SOUND_QUESTION, max_tokens=2)
    assert missing.value.code == "model_not_found" and "gpt-4o" in missing.value.message
    code, reply = post(tiny_server, "/v1/chat/completions", chat_body("hello", max_tokens=2))  # no model: the one
    assert code == 200 and reply["model"] == "tiny"


def test_audio_url_parts_are_input_audio_parts(tiny_server, tiny_client):
    def reply(part: dict) -> str:
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "what is this sound ?"}]}]
        return (
            tiny_client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
            .choices[0]
            .message.content
        )

    assert reply(audio_url_part("en_16k.wav")) == reply(wav_part("en_16k.wav"))

    url = {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}}
    code, error = post(tiny_server, "/v1/chat/completions", chat_body([url]))
    assert code == 400 and "only data: URLs" in error["error"]["message"]
    for kind in ("image_url", "input_video"):
        code, error = post(tiny_server, "/v1/chat/completions", chat_body([{"type": kind, kind: {}}]))
        assert code == 400 and f"unsupported part type '{kind}'" in error["error"]["message"]


def test_an_audio_part_is_decoded_once(tiny_server, monkeypatch):
    calls = []

    def counted(module):
        original = module.load_audio

        def load_audio(*args, **kwargs):
            calls.append(module.__name__)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "load_audio", load_audio)

    for module in (auralm.apps.server, auralm.lm.messages, auralm.tokenizer.speech_tokenizer):
        counted(module)
    body = chat_body([wav_part("en_8k.wav"), audio_url_part("en_fast_24k.ogg")], max_tokens=2)
    assert post(tiny_server, "/v1/chat/completions", body)[0] == 200
    assert calls == ["auralm.apps.server", "auralm.apps.server"]


def long_wav() -> tuple[bytes, torch.Tensor]:
    """About 41 s of speech (one sentence seven times) as wav bytes, and as the server decodes them."""
    audio = torch.cat([load_audio(DATA / "en_slow_22k.flac")] * 7)
    wav = io.BytesIO()
    soundfile.write(wav, audio.numpy(), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return wav.getvalue(), load_audio(wav.getvalue())


def cue_times(subtitles: str, separator: str) -> list[tuple[float, float]]:
    pattern = (
        rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d) --> (\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)"
    )
    times = []
    for match in re.finditer(pattern, subtitles):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        times.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000))
    return times


def test_transcription_formats_and_windows(tiny_client, tiny_chat, monkeypatch):
    speech = tiny_chat.speech_tokenizer  # greedy only: random weights would make the fallback sample
    monkeypatch.setattr(speech, "decode_text", functools.partial(speech.decode_text, temperatures=(0.0,)))
    data, audio = long_wav()
    windows = speech.windows(audio)
    assert len(windows) >= 2
    expected = speech.decode_text(speech.encode([audio[w.start : w.end] for w in windows]))

    def transcribe(response_format: str):
        return tiny_client.audio.transcriptions.create(
            model="auralm-tokens", file=("long.wav", data), response_format=response_format
        )

    verbose = transcribe("verbose_json")
    assert verbose.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert [(s.start, s.end) for s in verbose.segments] == [
        (w.start / SAMPLE_RATE, w.end / SAMPLE_RATE) for w in windows
    ]
    assert [s.text for s in verbose.segments] == expected
    assert verbose.segments[0].start == 0 and verbose.segments[-1].end == verbose.duration
    assert all(s.end - s.start <= 30 for s in verbose.segments) and verbose.language == "en"
    text = " ".join(t for t in expected if t)
    assert verbose.text == transcribe("json").text == transcribe("text").strip() == text

    srt, vtt = transcribe("srt"), transcribe("vtt")
    rounded = [(round(s.start, 3), round(s.end, 3)) for s in verbose.segments]
    assert cue_times(srt, ",") == cue_times(vtt, ".") == rounded
    assert srt.startswith("1\n00:00:00,000 --> ") and vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    blocks = srt.strip("\n").split("\n\n")
    assert [b.split("\n")[0] for b in blocks] == [str(i) for i in range(1, len(windows) + 1)]


def test_whisper_1_is_whisper_and_the_tokens_and_the_llm_have_their_own_names(
    tiny_server, tiny_client, tiny_chat, monkeypatch
):
    """OpenAI clients send whisper-1 expecting Whisper: it is the speech tokenizer's own Whisper on the audio, not
    the sound tokens read back (auralm-tokens) nor the LLM (its own name); all three are listed."""
    speech = tiny_chat.speech_tokenizer  # greedy only: random weights would make the fallback sample
    monkeypatch.setattr(speech, "decode_text", functools.partial(speech.decode_text, temperatures=(0.0,)))
    monkeypatch.setattr(auralm.apps.transcription, "transcribe", functools.partial(transcribe, temperatures=(0.0,)))
    clip = DATA / "en_8k.wav"

    def read(**options) -> str:
        with open(clip, "rb") as f:
            return tiny_client.audio.transcriptions.create(file=f, **options).text

    whisper = transcribe(speech.whisper, load_audio(clip), temperatures=(0.0,)).text
    decoder = speech.decode_text(speech.encode(clip))
    llm = tiny_chat.transcribe({"type": "audio", "path": clip}, max_new_tokens=16)
    assert len({whisper, decoder, llm}) == 3
    assert read(model="whisper-1") == whisper
    assert read(model="auralm-tokens") == decoder
    assert read(model="tiny") == llm
    assert [m.id for m in tiny_client.models.list().data] == ["tiny", "whisper-1", "auralm-tokens"]
    with pytest.raises(openai.NotFoundError) as missing:
        read(model="gpt-4o-transcribe")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="response_format"):
        read(model="whisper-1", response_format="xml")


def silent_wav(seconds: float) -> bytes:
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(int(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE, format="WAV")
    return wav.getvalue()


def test_silence_is_heard_as_silence_and_a_prompt_beyond_the_context_is_a_400(tiny_server, tiny_client, tiny_chat):
    ran = []  # no model runs on silence: neither Whisper (encoder or decoder) nor the LLM
    for model in (tiny_chat.model, tiny_chat.speech_tokenizer.whisper):
        model.register_forward_pre_hook(lambda *_: ran.append(1))
    for model in ("whisper-1", "auralm-tokens", "tiny"):
        result = tiny_client.audio.transcriptions.create(
            model=model, file=("quiet.wav", silent_wav(40)), response_format="verbose_json"
        )
        assert result.text == "" and [s.text for s in result.segments] == ["", ""], model
    data = base64.b64encode(silent_wav(3)).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    silent = [{"role": "user", "content": [part, {"type": "text", "text": "what is this sound ?"}]}]
    reply = tiny_client.chat.completions.create(model="tiny", messages=silent, max_tokens=8)
    assert reply.choices[0].message.content == NO_SPEECH_REPLY and reply.usage.completion_tokens == 0
    stream = tiny_client.chat.completions.create(model="tiny", messages=silent, max_tokens=8, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == NO_SPEECH_REPLY
    assert ran == []

    # 41 s of speech are 1,025 sound tokens; the tiny Llama's context is 512
    long = base64.b64encode(long_wav()[0]).decode()
    content = [{"type": "input_audio", "input_audio": {"data": long, "format": "wav"}}]
    for streamed in (False, True):
        code, error = post(tiny_server, "/v1/chat/completions", chat_body(content, max_tokens=8, stream=streamed))
        assert code == 400 and error["error"]["code"] == "context_length_exceeded", error
        assert "over the 504 this LLM takes with 8 new tokens (its context: 512)" in error["error"]["message"]
    assert tiny_client.chat.completions.create(model="tiny", messages=SOUND_QUESTION, max_tokens=2).choices


def test_the_access_log_has_a_line_per_request_and_a_hang_up_is_one_line(tiny_server, tiny_client, tiny_chat, caplog):
    caplog.set_level(logging.INFO, logger="auralm.apps.server")
    post(tiny_server, "/v1/chat/completions", b"{not json")
    urllib.request.urlopen(f"{tiny_server}/health", timeout=10).close()
    tiny_chat.model.generation_config.eos_token_id = None
    tiny_chat.model.register_forward_pre_hook(lambda *_: time.sleep(0.05))  # 16 tokens take 0.8 s
    stream = tiny_client.chat.completions.create(model="tiny", messages=SOUND_QUESTION, max_tokens=16, stream=True)
    next(iter(stream))
    stream.close()  # hangs up mid-stream
    host, port = tiny_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:  # promises 5000 bytes, sends a few, hangs up
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 5000\r\n\r\n{"messages": '
        )
    deadline = time.time() + 10
    while len(lines := [r.getMessage() for r in caplog.records if r.name == "auralm.apps.server"]) < 4:
        assert time.time() < deadline, lines
        time.sleep(0.05)
    assert sorted(re.sub(r"\d+ ms$", "N ms", line) for line in lines) == [
        "GET /health 200 N ms",
        "POST /v1/chat/completions 400 N ms",
        "POST /v1/chat/completions client disconnected mid-body after N ms",
        "POST /v1/chat/completions client disconnected mid-response (200) after N ms",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no traceback from uvicorn


def test_chat_requests_that_wait_together_are_answered_in_one_batch_each_as_alone(
    tiny_server, tiny_client, tiny_chat, monkeypatch
):
    tiny_chat.model.generation_config.eos_token_id = None  # only max_tokens or a stop string ends a reply
    spoken = [{"type": "audio", "path": DATA / "en_8k.wav"}, {"type": "text", "text": "what is this sound ?"}]
    stop = tiny_chat.reply([{"role": "user", "content": spoken}], max_new_tokens=8).text.split()[2]
    calls, gate = [], threading.Event()
    for name in ("replies", "streams"):  # what the model is asked, and for how many conversations at once
        method = getattr(tiny_chat, name)
        monkeypatch.setattr(tiny_chat, name, lambda c, *a, n=name, m=method: calls.append((n, len(c))) or m(c, *a))

    def together(sends: list) -> list:
        """What each of `sends` gets, all of them sent while the model is busy, so that all of them wait for it."""
        gate.clear()
        calls.clear()
        with ThreadPoolExecutor(len(sends) + 1) as pool:
            busy = pool.submit(post, tiny_server, "/v1/chat/completions", chat_body("hello", max_tokens=2))
            deadline = time.time() + 60
            while calls[-1:] != [("replies", 1)]:  # the first request holds the model
                assert time.time() < deadline
                time.sleep(0.01)
            sent = [pool.submit(send) for send in sends]
            while json.load(urllib.request.urlopen(f"{tiny_server}/health", timeout=10))["waiting"] < len(sends):
                assert time.time() < deadline
                time.sleep(0.01)
            gate.set()
            assert busy.result()[0] == 200
            return [future.result() for future in sent]

    def posted(content, options):
        return lambda: post(tiny_server, "/v1/chat/completions", chat_body(content, **options))

    def streamed(content, options):
        def send() -> tuple[str, str, int]:
            chunks = list(tiny_client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": content}], stream=True,
                stream_options={"include_usage": True}, **options,
            ))  # fmt: skip
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
            return (
                text,
                [c.choices[0].finish_reason for c in chunks if c.choices][-1],
                chunks[-1].usage.completion_tokens,
            )

        return send

    requests = [
        ([wav_part(), {"type": "text", "text": "what is this sound ?"}], {"max_tokens": 8, "stop": [stop]}),
        ([wav_part("en_16k.wav")], {"max_tokens": 5}),
        ("hello", {"max_tokens": 7}),
        ([wav_part(), {"type": "text", "text": "what is this sound ?"}], {"max_tokens": 3}),
    ]
    local = [spoken, [spoken[0] | {"path": DATA / "en_16k.wav"}], "hello", spoken]
    alone = [
        tiny_chat.reply([{"role": "user", "content": content}], options["max_tokens"], stop=options.get("stop", ()))
        for content, (_, options) in zip(local, requests, strict=True)
    ]
    assert [reply.finish_reason for reply in alone] == ["stop", "length", "length", "length"]
    tiny_chat.model.register_forward_pre_hook(lambda *_: gate.wait(60) and None)  # runs once the gate opens
    answered = together([posted(*request) for request in requests])
    assert calls == [("replies", 1), ("replies", 4)]  # the busy request alone, then the four as one batch
    assert [code for code, _ in answered] == [200] * 4
    assert [
        (
            body["choices"][0]["message"]["content"],
            body["choices"][0]["finish_reason"],
            body["usage"]["completion_tokens"],
        )
        for _, body in answered
    ] == [(reply.text, reply.finish_reason, reply.completion_tokens) for reply in alone]
    assert together([streamed(*request) for request in requests]) == [
        (reply.text, reply.finish_reason, reply.completion_tokens) for reply in alone
    ]
    assert calls == [("replies", 1), ("streams", 4)]

    too_long = base64.b64encode(long_wav()[0]).decode()
    too_long = [{"type": "input_audio", "input_audio": {"data": too_long, "format": "wav"}}]
    answered = together([posted(*requests[1]), posted(too_long, {"max_tokens": 8}), posted(*requests[2])])
    assert [code for code, _ in answered] == [200, 400, 200]  # the batch failed; each alone, one at fault
    assert answered[1][1]["error"]["code"] == "context_length_exceeded"
    assert [body["choices"][0]["message"]["content"] for _, body in answered[::2]] == [alone[1].text, alone[2].text]
