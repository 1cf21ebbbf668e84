"""Speech-LLM latency: time to first token and tokens per second for a 10 s clip + a question.

    python benchmarks/latency.py                          # the default: SmolLM2-135M + Whisper tiny.en tokenizer
    python benchmarks/latency.py --checkpoint my-tokenizer/   # SmolLM2-135M + that speech tokenizer
    python benchmarks/latency.py --shape ichigo --device cuda
        # random weights shaped like Ichigo: Llama-3.1-8B + a Whisper-medium tokenizer (bf16, GPU)
    python benchmarks/latency.py --concurrent 8           # also 8 conversations answered in one batch
                                                          # (as `auralm serve` answers waiting requests) vs in turn
    python benchmarks/latency.py --device cuda --static-cache
        # decoding into a fixed-size KV cache, compiled into CUDA graphs (SDPA attention); the first reply,
        # untimed, pays for the compilation

Time to first token counts everything after the audio arrives: decoding, tokenizing the audio,
the prompt's prefill and the first new token. A follow-up turn (a text question about the same
clip) is timed reusing what the first turn left behind (its KV cache and the clip's tokens) and
computing everything again. Weights need not be trained for timing. The default shape is built as
users build it (`SpeechChat.from_pretrained`: on CUDA, auralm's flash attention).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from whisper.model import ModelDimensions, Whisper

from auralm.checkpoints import load_whisper
from auralm.lm import SpeechChat, add_sound_tokens, load_llm
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, TokenizerConfig, load_audio

DATA = Path(__file__).parents[1] / "tests" / "data"
QUESTION = "What is said in this recording?"
FOLLOW_UP = "Say it again in fewer words."
LLAMA_31_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
)  # fmt: skip
WHISPER_MEDIUM = ModelDimensions(80, 1500, 1024, 16, 24, 51865, 448, 1024, 16, 24)


def build(
    shape: str, device: torch.device, checkpoint: str | None = None, llm: str | None = None, whisper: str = "tiny.en",
    static_cache: bool = False,
) -> SpeechChat:  # fmt: skip
    torch.manual_seed(0)
    if shape == "default":
        if checkpoint is not None:
            return SpeechChat.from_pretrained(llm, checkpoint=checkpoint, device=device, static_cache=static_cache)
        # a random bottleneck on the Whisper named costs what the shipped one does (a GPU run has no real Whisper)
        config = TokenizerConfig(whisper=whisper, n_state=384, n_head=6, n_codes=512)
        with tempfile.TemporaryDirectory() as folder:
            SpeechTokenizer(config, load_whisper(whisper)).save_pretrained(folder)
            return SpeechChat.from_pretrained(llm, checkpoint=folder, device=device, static_cache=static_cache)
    # Ichigo: Llama-3.1-8B with a Whisper-medium tokenizer of 512 codes, random weights
    model = LlamaForCausalLM(LLAMA_31_8B).to(device, torch.bfloat16).eval()
    _, tokenizer = load_llm(llm)  # SmolLM2's chat template and byte-level tokenizer drive it
    config = TokenizerConfig(whisper="medium", n_state=1024, n_head=16, n_codes=512)
    speech = SpeechTokenizer(config, Whisper(WHISPER_MEDIUM)).to(device).eval()
    add_sound_tokens(model, tokenizer, speech)
    # keep Llama 3.1's vocabulary (+ sound tokens), not SmolLM2's smaller one
    model.resize_token_embeddings(LLAMA_31_8B.vocab_size + 2 + config.vocab_size)
    return SpeechChat(model, tokenizer, speech, static_cache=static_cache)


def time_reply(chat: SpeechChat, conversation: list, new_tokens: int, device: torch.device) -> tuple[float, float]:
    """(seconds to the first piece of text, new tokens per second after it) of one streamed reply."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    pieces = chat.stream(conversation, max_new_tokens=new_tokens)
    next(pieces)
    first = time.perf_counter()
    for _ in pieces:
        pass
    done = time.perf_counter()
    return first - started, pieces.reply.completion_tokens / max(done - first, 1e-9)


def time_concurrent(
    chat: SpeechChat, conversations: list, new_tokens: int, device: torch.device
) -> tuple[float, float]:
    """(new tokens per second answering the conversations in one batch, in turn one by one): all replies' tokens
    over the wall time. Every reply runs to new_tokens (no end-of-text), so both ways generate the same tokens."""
    timed, eos = [], chat.model.generation_config.eos_token_id
    chat.model.generation_config.eos_token_id = None
    for batched in (True, False):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        if batched:
            n = len(conversations)
            replies = chat.replies(conversations, [new_tokens] * n, [()] * n)
        else:
            replies = [chat.reply(conversation, max_new_tokens=new_tokens) for conversation in conversations]
        if device.type == "cuda":
            torch.cuda.synchronize()
        timed.append(sum(reply.completion_tokens for reply in replies) / (time.perf_counter() - started))
    chat.model.generation_config.eos_token_id = eos
    return timed[0], timed[1]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["default", "ichigo"], default="default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", help="a speech tokenizer for the default shape (default: random, tiny.en)")
    parser.add_argument("--llm", help="LLM folder or .gguf (default: packaged SmolLM2); ichigo uses its tokenizer")
    parser.add_argument("--whisper", default="tiny.en", help="the default shape's tiny.en backbone: a name or .pt file")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=0, help="conversations answered together (0: not timed)")
    parser.add_argument("--static-cache", action="store_true", help="a fixed-size KV cache (CUDA graphs on a GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    chat = build(args.shape, device, args.checkpoint, args.llm, args.whisper, args.static_cache)
    clip = load_audio(DATA / "en_slow_22k.flac")
    clip = torch.cat([clip, clip])[: 10 * SAMPLE_RATE]  # 10 s
    wav = {"type": "audio", "array": clip.numpy(), "sampling_rate": SAMPLE_RATE}
    conversation = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, wav]}]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"

    reply = chat.generate(conversation, max_new_tokens=args.new_tokens)  # warm-up, and turn one's reply
    follow_up = [*conversation, {"role": "assistant", "content": reply}, {"role": "user", "content": FOLLOW_UP}]
    first_turn, from_scratch, reusing = [], [], []
    for _ in range(args.repeats):
        chat.forget()  # a new conversation: its clip and prompt are computed
        first_turn.append(time_reply(chat, conversation, args.new_tokens, device))
        chat.forget()
        from_scratch.append(time_reply(chat, follow_up, args.new_tokens, device)[0])
        chat.forget()
        chat.generate(conversation, max_new_tokens=args.new_tokens)  # turn one leaves its caches behind
        reusing.append(time_reply(chat, follow_up, args.new_tokens, device)[0])

    cache = "static KV cache" + (", CUDA graphs" if device.type == "cuda" else "") if args.static_cache else "dynamic"
    print(f"device: {name}; shape: {args.shape}; cache: {cache}; 10 s clip + question, {args.repeats} runs, median")
    print(f"time to first token: {median([t for t, _ in first_turn]) * 1e3:.0f} ms")
    print(f"decode: {median([r for _, r in first_turn]):.1f} tokens/s")
    kept = (
        "clip tokens (a static cache is not carried between turns)" if args.static_cache else "KV cache and clip tokens"
    )
    print(
        f"follow-up turn, time to first token: {median(reusing) * 1e3:.0f} ms reusing turn one's {kept}, "
        f"{median(from_scratch) * 1e3:.0f} ms computing them again ({median(from_scratch) / median(reusing):.1f}x)"
    )
    if args.concurrent > 1:
        questions = [[{"role": "user", "content": [{"type": "text", "text": f"{QUESTION} ({i})"}, wav]}]
                     for i in range(args.concurrent)]  # fmt: skip
        batched, in_turn = time_concurrent(chat, questions, args.new_tokens, device)
        print(
            f"{args.concurrent} conversations at once: {batched:.1f} tokens/s in one batch, {in_turn:.1f} tokens/s "
            f"one after another ({batched / in_turn:.2f}x)"
        )


if __name__ == "__main__":
    main()
