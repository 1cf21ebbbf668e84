"""Serving throughput: the built-in `auralm serve` against `auralm serve --upstream` in front of `transformers serve`.

    python benchmarks/upstream_throughput.py                  # the shipped pair, merged into a temporary folder
    python benchmarks/upstream_throughput.py --device cuda --clients 16 --requests 64
    python benchmarks/upstream_throughput.py --tiny           # tiny random models: checks that the script runs

Both serve the same merged model (`auralm merge`) in float32, the built-in server's dtype, each in its own
process, one after the other; N client threads (the official `openai` client) send the same audio + question,
greedy, and the script prints requests per second and the median latency of each, the ratio, and the device.
The built-in server answers the requests that wait for its model together in one batch (auralm.apps.model_queue;
a request arriving meanwhile waits for the next); upstream mode encodes the clips of concurrent requests together
and leaves generation to the engine, which batches them with `--continuous-batching` (transformers serve's flag,
on by default on CUDA). A clip's sound tokens are cached by
content in both, so with the same clip the speech tokenizer runs once; `--distinct-audio` gives every request
its own clip (a different length of trailing silence), so the tokenizer's work counts too.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import openai
import soundfile
import torch

from auralm.apps.demo import QUESTION as QUESTION_CLIP
from auralm.checkpoints import DEFAULT_SPEECH_TOKENIZER
from auralm.lm import add_sound_tokens
from auralm.lm.merge import merge_speech_llm
from auralm.tokenizer import SAMPLE_RATE, load_audio

ROOT = Path(__file__).parents[1]
QUESTION = "Answer the question in the recording."


def tiny_pair(folder: Path) -> tuple[Path, Path]:
    """(speech tokenizer folder, merged LLM folder) of tiny random models, as the tests build them."""
    import dataclasses

    from whisper.model import Whisper

    sys.path.insert(0, str(ROOT))  # the tests' tiny models
    from auralm.tokenizer import SpeechTokenizer
    from tests.conftest import TINY_CONFIG, TINY_WHISPER, randomize
    from tests.lm.conftest import tiny_llama, tiny_text_tokenizer

    whisper = Whisper(TINY_WHISPER)
    randomize(whisper, seed=0)
    torch.save({"dims": dataclasses.asdict(TINY_WHISPER), "model_state_dict": whisper.state_dict()}, folder / "w.pt")
    torch.manual_seed(1)
    speech = SpeechTokenizer(dataclasses.replace(TINY_CONFIG, whisper=str(folder / "w.pt")), whisper)
    randomize(speech.bottleneck, seed=1)
    speech.save_pretrained(folder / "speech")
    llm, tokenizer = tiny_llama(False, initializer_range=0.3), tiny_text_tokenizer()
    add_sound_tokens(llm, tokenizer, speech)
    llm.save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    return folder / "speech", merge_speech_llm(folder / "llm", out=folder / "merged")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(command: list[str], log: Path, ready: str | None = None, health: str | None = None):
    """A server process, until it is ready: its log matches `ready` (whose group 1 is the URL), or `health`
    answers. Yields its URL; terminated on leaving."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 900
        while True:
            if ready is not None and (found := re.search(ready, log.read_text())):
                url = found.group(1)
                break
            if health is not None:
                with suppress(OSError):
                    urllib.request.urlopen(health, timeout=5).close()
                    url = health.rsplit("/", 1)[0]
                    break
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{command[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def wav_part(audio: torch.Tensor) -> dict:
    wav = io.BytesIO()
    soundfile.write(wav, audio.numpy(), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}}


def load(url: str, model: str, parts: list[dict], clients: int, requests: int, max_tokens: int) -> tuple[float, float]:
    """(requests per second, median seconds per request) of `requests` chats sent by `clients` threads."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=900)

    def one(i: int) -> float:
        messages = [{"role": "user", "content": [parts[i % len(parts)], {"type": "text", "text": QUESTION}]}]
        started = time.perf_counter()
        client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - started

    one(0)  # warm-up: first-use costs (and the first clip's tokens) are not throughput
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(1, requests + 1)))
    return requests / (time.perf_counter() - started), statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a check that the script runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default: 8)")
    parser.add_argument("--requests", type=int, help="requests timed (default: 4 per client)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default: 64)")
    parser.add_argument("--distinct-audio", action="store_true", help="a different clip in every request")
    parser.add_argument(
        "--continuous-batching",
        action=argparse.BooleanOptionalAction,
        help="transformers serve's continuous batching (default: on with CUDA)",
    )
    args = parser.parse_args()
    requests = args.requests or 4 * args.clients
    batching = args.device.startswith("cuda") if args.continuous_batching is None else args.continuous_batching
    clip = load_audio(QUESTION_CLIP)
    tails = range(requests + 1) if args.distinct_audio else [0]
    parts = [wav_part(torch.cat([clip, torch.zeros(640 * tail)])) for tail in tails]

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if args.tiny:
            speech, merged = tiny_pair(folder)
        else:
            speech, merged = DEFAULT_SPEECH_TOKENIZER, merge_speech_llm(out=folder / "merged")
        auralm = [sys.executable, "-m", "auralm", "serve", "--checkpoint", str(speech), "--device", args.device]
        listening = r"listening on (http://[\d.]+:\d+)"

        builtin_command = [*auralm, "--llm", str(merged), "--port", str(free_port()), "--max-waiting", str(requests)]
        with process(builtin_command, folder / "builtin.log", ready=listening) as url:
            builtin = load(url, merged.stem, parts, args.clients, requests, args.max_tokens)

        port = free_port()
        engine = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; main()", "serve",
                  str(merged), "--device", args.device, "--dtype", "float32", "--host", "127.0.0.1", "--port",
                  str(port), "--continuous-batching" if batching else "--no-continuous-batching"]  # fmt: skip
        with process(engine, folder / "engine.log", health=f"http://127.0.0.1:{port}/health") as engine_url:
            front_command = [*auralm, "--upstream", f"{engine_url}/v1", "--upstream-model", str(merged),
                             "--port", str(free_port())]  # fmt: skip
            with process(front_command, folder / "front.log", ready=listening) as url:
                upstream = load(url, str(merged), parts, args.clients, requests, args.max_tokens)

    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(args.device))
    else:
        device = f"CPU {platform.machine()} ({os.cpu_count()} cores)"
    model = "tiny random models" if args.tiny else "the shipped pair (SmolLM2-135M-Instruct + speech adapter), merged"
    audio = "a different clip each" if args.distinct_audio else "the same clip"
    print(f"device: {device}; {model}; float32")
    print(f"{args.clients} clients, {requests} requests, max_tokens {args.max_tokens}, greedy, {audio}")
    print(f"built-in auralm serve:                 {builtin[0]:7.2f} requests/s, p50 {builtin[1] * 1e3:7.0f} ms")
    print(
        f"--upstream + transformers serve{' (CB)' if batching else '     '}: {upstream[0]:7.2f} requests/s, "
        f"p50 {upstream[1] * 1e3:7.0f} ms"
    )
    print(f"ratio upstream / built-in: {upstream[0] / builtin[0]:.2f}x requests/s, {upstream[1] / builtin[1]:.2f}x p50")


if __name__ == "__main__":
    main()
