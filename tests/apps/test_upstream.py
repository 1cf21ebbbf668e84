"""`auralm serve --upstream` in front of a real `transformers serve` on loopback, driven by the official `openai` client.

The upstream serves a tiny merged speech LLM (`merge_speech_llm` of a random Llama + a LoRA adapter with trained
sound-token rows) from a Hugging Face hub cache, offline, as `hf download` would have left it; auralm's front end
runs in a thread with the speech tokenizer the LLM was trained on. Replies are compared with auralm's in-process
`SpeechChat` on the same merged folder, greedy: they match only if the audio reached the upstream model as the
very sound-token text the built-in path renders.
"""

import base64
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import soundfile
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from auralm.apps.cli import main
from auralm.apps.server import create_app
from auralm.apps.upstream import Upstream, UpstreamError, connect_upstream, create_upstream_app
from auralm.checkpoints import load_whisper
from auralm.lm import SpeechChat, SpeechTokenizerMismatchError
from auralm.lm.merge import merge_speech_llm
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, load_audio
from auralm.tokenizer.token_format import NO_SPEECH_REPLY, heard_reply
from tests.apps.conftest import running
from tests.apps.test_server import audio_url_part, free_port, silent_wav, wav_part
from tests.conftest import DATA, TINY_CONFIG, randomize
from tests.lm.conftest import save_sound_adapter, tiny_llama, tiny_text_tokenizer

MODEL = "auralm/tiny-speech"  # its name in the upstream's hub cache
QUESTION = {"type": "text", "text": "what is this sound ?"}
COMMIT = "0" * 40


def speech_llm(folder: Path, speech: SpeechTokenizer) -> Path:
    """A merged folder: a random Llama over tests.lm.conftest's words + a LoRA adapter with trained sound-token input
    rows, saved as `auralm train pretrain` saves one. The output rows of the sound tokens stay at the mean of the
    others (their logit is the mean of the words', never the largest), so replies are words, not sound tokens."""
    llm, tokenizer = tiny_llama(False, initializer_range=0.3), tiny_text_tokenizer()  # replies differ by clip
    save_sound_adapter(folder, llm, tokenizer, speech, output_rows=False)
    return merge_speech_llm(folder / "base", folder / "adapter", out=folder / "merged")


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory, tiny_whisper_file) -> Path:
    torch.manual_seed(1)  # ResidualVQ draws its codebook from the global generator
    config = dataclasses.replace(TINY_CONFIG, whisper=str(tiny_whisper_file))
    tokenizer = SpeechTokenizer(config, load_whisper(str(tiny_whisper_file)))
    randomize(tokenizer.bottleneck, seed=1)
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("speech") / "tokenizer")


@pytest.fixture(scope="module")
def merged(tmp_path_factory, speech_folder) -> Path:
    return speech_llm(tmp_path_factory.mktemp("llm"), SpeechTokenizer.from_pretrained(speech_folder))


@pytest.fixture(scope="module")
def chat(merged, speech_folder) -> SpeechChat:
    """The reference: auralm's own chat on the merged folder."""
    return SpeechChat.from_pretrained(llm=merged, checkpoint=speech_folder, device="cpu")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, merged) -> str:
    """`transformers serve` in a subprocess, offline, over a hub cache holding only the merged model: its base URL."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{MODEL.replace('/', '--')}"
    shutil.copytree(merged, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    port, log = free_port(), cache / "serve.log"
    command = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", command, "serve", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)],
            stdout=output, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/health", timeout=5).close()
            break
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(f"transformers serve did not start: {log.read_text()}")
        time.sleep(0.2)
    yield f"{url}/v1"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def speech(speech_folder) -> SpeechTokenizer:
    return SpeechTokenizer.from_pretrained(speech_folder)


@pytest.fixture(scope="module")
def front(upstream, speech):
    """auralm's front end in a thread: (its base URL, the app), the upstream model found through GET /v1/models."""
    app = create_upstream_app(speech, connect_upstream(upstream, speech))
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(front):
    return openai.OpenAI(base_url=f"{front[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def local(*audio: dict) -> list[dict]:
    """The same question as SpeechChat takes it."""
    return [{"role": "user", "content": [*audio, QUESTION]}]


def ask(client, part: dict, model: str = MODEL, **options) -> openai.types.chat.ChatCompletion:
    messages = [{"role": "user", "content": [part, QUESTION]}]
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **options)


def test_audio_chat_is_answered_upstream_as_the_merged_model_answers_it_here(client, chat):
    assert [m.id for m in client.models.list().data] == [MODEL]
    replies = {}
    for name in ("en_8k.wav", "en_16k.wav", "en_slow_22k.flac"):
        reply = ask(client, wav_part(name), max_tokens=8)
        expected = chat.reply(local({"type": "audio", "path": DATA / name}), max_new_tokens=8)
        assert reply.choices[0].message.content == expected.text
        assert reply.usage.prompt_tokens == expected.prompt_tokens  # the sound tokens, one token each
        replies[name] = expected.text
    # the replies depend on the audio: dropped or mis-rendered audio would not give the same three
    assert len(set(replies.values())) == 3 and chat.reply(local(), max_new_tokens=8).text not in replies.values()
    assert ask(client, audio_url_part("en_16k.wav"), max_tokens=8).choices[0].message.content == replies["en_16k.wav"]


def test_streams_are_relayed_and_join_to_the_whole_reply(client, chat):
    whole = ask(client, wav_part("en_16k.wav"), max_tokens=8).choices[0].message.content
    chunks = list(ask(client, wav_part("en_16k.wav"), max_tokens=8, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 8

    stream = ask(client, wav_part("en_8k.wav"), max_tokens=64, stream=True)
    next(iter(stream))
    stream.close()  # a client that hangs up mid-stream; the next request is served as usual
    assert ask(client, wav_part("en_8k.wav"), max_tokens=2).choices


def test_silence_is_answered_as_silence_without_the_upstream(client, speech):
    """As the built-in server: a turn whose audio is all silence is "I couldn't hear any speech in that.", whole or
    streamed, with no token spent upstream and no encoder run here."""
    ran = []
    hook = speech.whisper.register_forward_pre_hook(lambda *_: ran.append(1))
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(silent_wav(3)).decode(), "format": "wav"}}
    try:
        reply = ask(client, part, max_tokens=8)
        chunks = list(ask(client, part, max_tokens=8, stream=True, stream_options={"include_usage": True}))
    finally:
        hook.remove()
    assert reply.choices[0].message.content == NO_SPEECH_REPLY and reply.usage.completion_tokens == 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == NO_SPEECH_REPLY
    assert chunks[-1].usage.completion_tokens == 0 and ran == []


def test_a_clip_longer_than_the_window_is_asked_window_by_window(upstream, tiny_whisper_file, chat):
    """Issue 25: as SpeechChat answers a clip longer than its tokenizer's window, so does the front end: each
    window asked upstream in turn, the replies joined, the tokens summed; streamed as one piece."""
    short = SpeechTokenizer(dataclasses.replace(TINY_CONFIG, whisper=str(tiny_whisper_file), window_seconds=2),
                            load_whisper(str(tiny_whisper_file)))  # fmt: skip
    randomize(short.bottleneck, seed=1)
    audio = load_audio(DATA / "de_16k.flac")  # 5.9 s: three windows of at most 2 s
    assert len(short.windows(audio)) >= 3
    reference = SpeechChat(chat.model, chat.tokenizer, short.eval(), allow_mismatch=True)
    expected = reference.reply(local({"type": "audio", "array": audio, "sampling_rate": SAMPLE_RATE}), max_new_tokens=4)
    each = [reference.reply(local({"type": "audio", "array": audio[w.start : w.end]}), max_new_tokens=4)
            for w in short.windows(audio)]  # fmt: skip
    assert expected.text == " ".join(reply.text for reply in each)
    with running(create_upstream_app(short, connect_upstream(upstream, short))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = ask(client, wav_part("de_16k.flac"), max_tokens=4)
        chunks = list(ask(client, wav_part("de_16k.flac"), max_tokens=4, stream=True,
                          stream_options={"include_usage": True}))  # fmt: skip
    assert reply.choices[0].message.content == expected.text
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.prompt_tokens,
                                                                         expected.completion_tokens)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens


def test_a_stream_is_relayed_as_it_comes_not_when_it_ends(chat, speech):
    """The upstream here is auralm's built-in server on the merged model, held before its first token until the
    client has read the first chunk through the front end: a front end that buffered would never deliver it."""
    first_chunk_read = threading.Event()

    def wait_for_the_reader(*_) -> None:  # a forward pre-hook: returning anything would replace the inputs
        first_chunk_read.wait(timeout=30)

    hold = chat.model.register_forward_pre_hook(wait_for_the_reader)
    try:
        with (
            running(create_app(chat, "speech")) as upstream,
            running(create_upstream_app(speech, Upstream(f"{upstream}/v1", "speech"))) as url,
        ):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=20)
            chunks = iter(ask(client, wav_part("en_16k.wav"), "speech", max_tokens=8, stream=True))
            assert next(chunks).choices[0].delta.role == "assistant"  # before any token was generated
            first_chunk_read.set()
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        first_chunk_read.set()  # a failed test leaves no generation waiting
        hold.remove()
    assert text == chat.reply(local({"type": "audio", "path": DATA / "en_16k.wav"}), max_new_tokens=8).text


def heard_first_upstream(reply: str) -> FastAPI:
    """A stand-in for an upstream serving a model trained with sft's `heard_first`: it answers every request with
    `reply`, whole or streamed three characters an event, each event sent in two halves."""
    app = FastAPI()

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n".encode()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> Response:
        if not (await request.json()).get("stream"):
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]})  # fmt: skip
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": reply[i : i + 3]}) for i in range(0, len(reply), 3)]
        events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        return StreamingResponse((half for e in events for half in (e[:7], e[7:])), media_type="text/event-stream")

    return app


@pytest.mark.parametrize("answer", ["the cat .", "He", ""])
def test_the_line_saying_what_was_heard_is_taken_off_whole_or_streamed(speech, answer):
    reply = heard_reply("what is this sound ?", answer)
    with running(heard_first_upstream(reply)) as upstream, running(
        create_upstream_app(speech, Upstream(f"{upstream}/v1", MODEL))
    ) as url:  # fmt: skip
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        whole = ask(client, wav_part("en_16k.wav")).choices[0]
        chunks = list(ask(client, wav_part("en_16k.wav"), stream=True))
    assert whole.message.content == answer and whole.finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_upstream_errors_come_back_with_their_status(client, front):
    with pytest.raises(openai.UnprocessableEntityError) as unknown:  # transformers serve: 422, FastAPI's detail
        ask(client, wav_part(), max_tokens=2, extra_body={"frobnicate": 1})
    error = unknown.value.body  # OpenAI's error object
    assert error["message"].startswith("upstream: ") and "frobnicate" in error["message"]
    assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.InternalServerError) as crashed:  # a model it cannot load: 500, plain text
        client.chat.completions.create(model="auralm/missing", messages=local(wav_part()), max_tokens=2)
    assert crashed.value.body == {"message": "upstream: Internal Server Error", "type": "upstream_error",
                                  "param": None, "code": None}  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="not valid base64"):  # audio is checked here, never forwarded
        ask(client, {"type": "input_audio", "input_audio": {"data": "%%%"}}, max_tokens=2)


def test_an_unreachable_upstream_is_a_502_naming_it(speech):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with running(create_upstream_app(speech, Upstream(dead, MODEL))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as error:
            ask(client, wav_part(), max_tokens=2)
        assert error.value.status_code == 502 and error.value.type == "upstream_error"
        assert error.value.body["message"].startswith(f"the upstream server {dead} did not answer")
    with pytest.raises(UpstreamError, match=f"cannot reach the upstream server {re.escape(dead)}"):
        connect_upstream(dead, speech)


def clip(seconds: float) -> bytes:
    """The start of a spoken sentence as wav bytes: a clip no other test sends."""
    audio = load_audio(DATA / "en_slow_22k.flac")[: int(seconds * SAMPLE_RATE)]
    wav = io.BytesIO()
    soundfile.write(wav, audio.numpy(), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return wav.getvalue()


def test_concurrent_requests_are_all_answered_and_their_clips_encoded_together(client, front, chat, monkeypatch):
    clips = [clip(1.0 + 0.2 * i) for i in range(8)]
    batcher = front[1].state.batcher
    encode, batches = batcher.speech.encode, []

    def counted(audio, *args, **kwargs):  # the first batch waits until every other clip waits for the next one
        batches.append(len(audio))
        deadline = time.time() + 60
        while len(batches) == 1 and len(audio) + batcher.waiting < len(clips):
            assert time.time() < deadline, f"{batcher.waiting} clips waiting"
            time.sleep(0.01)
        return encode(audio, *args, **kwargs)

    monkeypatch.setattr(batcher.speech, "encode", counted)

    def reply(data: bytes) -> str:
        part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
        return ask(client, part, max_tokens=6).choices[0].message.content

    with ThreadPoolExecutor(len(clips)) as pool:
        replies = list(pool.map(reply, clips))
    assert sum(batches) == len(clips) and len(batches) <= 2  # 8 requests, one or two tokenizer batches
    expected = [chat.reply(local({"type": "audio", "path": data}), max_new_tokens=6).text for data in clips]
    assert replies == expected and len(set(expected)) > 1


def test_the_start_up_check_finds_the_model_and_refuses_another_speech_tokenizers(upstream, speech, caplog):
    caplog.set_level(logging.INFO, logger="auralm.apps.upstream")
    assert connect_upstream(upstream, speech).model == MODEL  # the one model the upstream lists
    notes = [r.getMessage() for r in caplog.records]
    assert any("holds the 67 sound tokens" in note for note in notes)
    assert any("cannot be read through the OpenAI API" in note and speech.tokenizer_hash in note for note in notes)

    def other(n_codes: int) -> SpeechTokenizer:
        config = dataclasses.replace(TINY_CONFIG, whisper="tiny-random", n_codes=n_codes)
        return SpeechTokenizer(config, speech.whisper)

    with pytest.raises(SpeechTokenizerMismatchError, match=r"lacks the sound tokens .*<\|sound_0128\|>"):
        connect_upstream(upstream, other(128), model=MODEL)
    with pytest.raises(SpeechTokenizerMismatchError, match=r"beyond this speech tokenizer's 33 codes"):
        connect_upstream(upstream, other(32))
    assert connect_upstream(upstream, other(32), allow_mismatch=True).model == MODEL
    assert any("beyond" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_an_upstream_with_several_models_needs_one_named(chat, speech):
    with running(create_app(chat, "speech")) as url:  # auralm's built-in server lists three
        with pytest.raises(
            UpstreamError, match=r"serves 3 models \(speech, whisper-1, auralm-tokens\); pick one with --upstream"
        ):
            connect_upstream(f"{url}/v1", speech)
        with pytest.raises(UpstreamError, match="give the base URL OpenAI clients take"):
            connect_upstream(url, speech)  # /v1 left out


def test_the_serve_command_refuses_upstream_flags_that_do_not_fit(capsys):
    assert main(["serve", "--upstream", "http://127.0.0.1:1/v1", "--llm", "smollm2"]) == 2
    assert "with --upstream the LLM runs upstream" in capsys.readouterr().err
    assert main(["serve", "--upstream-model", MODEL]) == 2
    assert "--upstream-model and --upstream-key go with --upstream URL" in capsys.readouterr().err


def test_auralm_serve_upstream_end_to_end(upstream, speech_folder, chat, tmp_path):
    """The real command in a subprocess, in front of the same upstream."""
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "auralm", "serve", "--upstream", upstream, "--checkpoint", str(speech_folder),
             "--port", str(free_port())],
            stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (found := re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert process.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{found.group(1)}/v1", api_key="unused", max_retries=0)
        reply = ask(client, wav_part("en_16k.wav"), max_tokens=8).choices[0].message.content
        assert reply == chat.reply(local({"type": "audio", "path": DATA / "en_16k.wav"}), max_new_tokens=8).text
        text = log.read_text()
        assert f"upstream model '{MODEL}' at {upstream}" in text and "POST /v1/chat/completions 200" in text
    finally:
        process.terminate()
        process.wait(timeout=30)
