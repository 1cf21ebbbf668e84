"""The real server on localhost, driven by the official `openai` client and by malformed requests."""

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.conftest import DATA

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tokenizer_folder):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "auralm", "serve", "--checkpoint", str(tokenizer_folder), "--port", str(port),
         "--max-audio-seconds", "5", "--max-body-mb", "1", "--max-new-tokens", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if json.load(response)["status"] == "ok":
                    break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stdout.read()}") from None
            time.sleep(0.5)
    else:
        process.kill()
        raise RuntimeError("server did not start in 180 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def wav_part(name: str = "en_8k.wav") -> dict:
    data = base64.b64encode((DATA / name).read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": name.rsplit(".", 1)[1]}}


QUESTION = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}, wav_part()]}]


def post(server: str, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{server}{path}", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_models_and_chat_with_audio(client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40)
    assert "Paris" in reply.choices[0].message.content


def test_streaming_gives_the_same_text(client):
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40).choices[0].message.content
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces) == whole and len(pieces) > 2


def test_a_client_that_hangs_up_mid_stream_frees_the_model(client):
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=64, stream=True)
    next(iter(stream))
    stream.close()  # the server ends that generation and takes the next request
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, timeout=60)
    assert reply.choices[0].message.content


def test_transcription_endpoint(client):
    with open(DATA / "en_8k.wav", "rb") as f:
        result = client.audio.transcriptions.create(model="smollm2", file=f)
    assert isinstance(result.text, str) and result.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"messages": "hello"}).encode(), 400, "non-empty list"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
        (
            json.dumps({"messages": [{"role": "user", "content": [{"type": "video"}]}]}).encode(),
            400,
            "expected a 'text' or 'input_audio'",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%not base64"}}]}
                    ]
                }
            ).encode(),
            400,
            "not valid base64",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "input_audio",
                                    "input_audio": {"data": base64.b64encode(b"just text, no audio" * 20).decode()},
                                }
                            ],
                        }
                    ]
                }
            ).encode(),
            400,
            "not a readable audio file",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": [wav_part("en_slow_22k.flac")]}]}).encode(),
            400,
            "over the 5 s limit",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(),
            400,
            "max_tokens",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(),
            400,
            "temperature",
        ),
        (json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode(), 413, "request body over"),
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


def test_transcription_without_a_file_is_a_400(server):
    code, error = post(server, "/v1/audio/transcriptions", b"--x--\r\n", "multipart/form-data; boundary=x")
    assert code == 400 and "file" in error["error"]["message"]
