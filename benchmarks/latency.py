"""Speech-LLM latency: time to first token and tokens per second for a 10 s clip + a question.

    python benchmarks/latency.py                          # the default: SmolLM2-135M + Whisper tiny.en tokenizer
    python benchmarks/latency.py --shape ichigo --device cuda
        # random weights shaped like Ichigo: Llama-3.1-8B + a Whisper-medium tokenizer (bf16, GPU)

Time to first token counts everything after the audio arrives: decoding, tokenizing the audio,
the prompt's prefill and the first new token. Weights need not be trained for timing.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from whisper.model import ModelDimensions, Whisper

from auralm.checkpoints import load_whisper
from auralm.lm import SpeechChat, add_sound_tokens, load_llm
from auralm.tokenizer import SpeechTokenizer, TokenizerConfig, load_audio

DATA = Path(__file__).parents[1] / "tests" / "data"
QUESTION = "What is said in this recording?"
LLAMA_31_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
)  # fmt: skip
WHISPER_MEDIUM = ModelDimensions(80, 1500, 1024, 16, 24, 51865, 448, 1024, 16, 24)


def build(shape: str, device: torch.device) -> SpeechChat:
    torch.manual_seed(0)
    if shape == "default":
        model, tokenizer = load_llm(device=device)
        whisper = load_whisper("tiny.en")
        config = TokenizerConfig(whisper="tiny.en", n_state=384, n_head=6, n_codes=512)
    else:  # Ichigo: Llama-3.1-8B with a Whisper-medium tokenizer of 512 codes, random weights
        model = LlamaForCausalLM(LLAMA_31_8B).to(device, torch.bfloat16).eval()
        _, tokenizer = load_llm()  # SmolLM2's chat template and byte-level tokenizer drive it
        whisper = Whisper(WHISPER_MEDIUM)
        config = TokenizerConfig(whisper="medium", n_state=1024, n_head=16, n_codes=512)
    speech = SpeechTokenizer(config, whisper).to(device).eval()
    add_sound_tokens(model, tokenizer, speech)
    if shape == "ichigo":  # keep Llama 3.1's vocabulary (+ sound tokens), not SmolLM2's smaller one
        model.resize_token_embeddings(LLAMA_31_8B.vocab_size + 2 + config.n_codes)
    return SpeechChat(model, tokenizer, speech)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["default", "ichigo"], default="default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    chat = build(args.shape, device)
    clip = load_audio(DATA / "en_slow_22k.flac")
    clip = torch.cat([clip, clip])[: 10 * 16000]  # 10 s
    wav = {"type": "audio", "array": clip.numpy(), "sampling_rate": 16000}
    conversation = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, wav]}]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"

    chat.generate(conversation, max_new_tokens=4)  # warm-up
    first_token, rates = [], []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        pieces = chat.stream(conversation, max_new_tokens=args.new_tokens)
        next(pieces)
        first = time.perf_counter()
        reply = "".join(pieces)
        done = time.perf_counter()
        new_tokens = max(1, len(chat.tokenizer(reply, add_special_tokens=False)["input_ids"]))
        first_token.append(first - started)
        rates.append(new_tokens / max(done - first, 1e-9))
    print(f"device: {name}; shape: {args.shape}; 10 s clip + question, {args.repeats} runs, median")
    print(f"time to first token: {sorted(first_token)[len(first_token) // 2] * 1e3:.0f} ms")
    print(f"decode: {sorted(rates)[len(rates) // 2]:.1f} tokens/s")


if __name__ == "__main__":
    main()
