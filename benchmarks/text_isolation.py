"""Why a merged speech adapter changes text answers, and two ways to keep them (issue 24; RESULTS.md, 2026-12-06).

    python benchmarks/text_isolation.py project --lambdas 1 10 100   # the shipped adapter, projected off text
    python benchmarks/text_isolation.py widen                         # a wider LLM whose new weights text can't reach

project: for every LoRA layer, Σs is the second moment of its inputs at sound-token positions (the adapter on,
spoken training conversations) and Σt that of typed text (the adapter off, typed training questions with the base
LLM's own greedy replies). A ← A·Σs·(Σs + λΣt)⁻¹ is the rank-r change closest to the adapter's on sound positions
that penalises λ× what it does to text. Prints, for each λ: the share of the change's energy kept on each, the
report's text answers unchanged with the adapter merged, and the LLM's transcription WER on validation clips.

widen: SmolLM2 widened for sound (`auralm.lm.widening`, what `widen_dims=` trains) by `--dims` hidden dims and
`--neurons` MLP neurons, every weight that would train set at random, saved and loaded with plain transformers;
prints how many of the report's text answers stay identical.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from functools import partial
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from auralm.evaluation import TEXT_QUESTIONS, read_clips, text_reply
from auralm.lm import SpeechChat, load_llm
from auralm.lm.widening import Widening, trainable_masks, widen
from auralm.tokenizer import corpus_word_error_rate, normalize_text
from auralm.training.quiet_lora import lora_layers

SHIPPED_ADAPTER = "checkpoints/shipped/speech-smollm2"
TOKENIZER = "runs/candidate/speech-tokenizer"
DATA = Path("data/speech-v2")
STAND_IN_SOUND_ROWS = 64  # widen: the base vocabulary's last rows play sound tokens (their logits are left out)


def training_conversations(count: int) -> tuple[list[list[dict]], list[str]]:
    """`count` spoken conversations (audio paths made absolute) and `count` typed questions from the chat manifest."""
    rows = [json.loads(line) for line in (DATA / "chat_train.jsonl").open()]
    random.Random(0).shuffle(rows)
    spoken = [row["messages"] for row in rows if not row["id"].endswith("-text")][:count]
    for messages in spoken:
        for part in messages[0]["content"]:
            if "path" in part:
                part["path"] = str(DATA / part["path"])
    typed = [row["messages"][0]["content"][0]["text"] for row in rows if row["id"].endswith("-text")][:count]
    return spoken, typed


@torch.no_grad()
def input_moments(adapter: str, count: int) -> dict[str, dict[str, torch.Tensor]]:
    """{"sound" | "text": {LoRA layer: E[x xᵀ] of its inputs (d_in, d_in)}}: sound positions with the adapter on,
    typed questions and the base LLM's replies with it off."""
    chat = SpeechChat.from_pretrained(checkpoint=TOKENIZER, adapter=adapter, keep_base=False)  # renders the clips
    base, base_tokenizer = load_llm(None)
    first_sound = len(base_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = PeftModel.from_pretrained(base, adapter).eval()
    sums: dict[str, dict[str, torch.Tensor]] = {"sound": {}, "text": {}}
    counts = dict.fromkeys(sums, 0)
    reading: dict[str, torch.Tensor] = {}  # kind → the positions to read; empty while replies are generated

    def accumulate(name: str, _module, args) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).float()  # (tokens, d_in)
        for kind, mask in reading.items():
            sums[kind][name] = sums[kind].get(name, 0) + x[mask].T @ x[mask]

    layers = lora_layers(model)
    hooks = [layer.get_base_layer().register_forward_pre_hook(partial(accumulate, n)) for n, layer in layers.items()]
    spoken, typed = training_conversations(count)
    try:
        for messages in spoken:
            ids = torch.tensor(tokenizer.apply_chat_template(chat.render([messages])[0], return_dict=False))
            reading["sound"] = ids >= first_sound
            counts["sound"] += int(reading["sound"].sum())
            model(input_ids=ids[None], use_cache=False)
        reading.clear()
        with model.disable_adapter():
            for question in typed:
                reply = text_reply(model, tokenizer, question)
                turns = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
                ids = torch.tensor(tokenizer.apply_chat_template(turns, return_dict=False))
                reading["text"] = torch.ones(len(ids), dtype=torch.bool)
                counts["text"] += len(ids)
                model(input_ids=ids[None], use_cache=False)
                reading.clear()
    finally:
        for hook in hooks:
            hook.remove()
    return {kind: {n: s / counts[kind] for n, s in layer_sums.items()} for kind, layer_sums in sums.items()}


def projected(adapter: str, moments: dict, lam: float, into: Path) -> tuple[float, float]:
    """Write the adapter with every A ← A·Σs·(Σs + λΣt)⁻¹ into `into`; returns the shares of the change's energy
    (tr(ΔW Σ ΔWᵀ), summed over layers) kept on sound positions and on typed text."""
    shutil.copytree(adapter, into, dirs_exist_ok=True)
    weights = load_file(Path(adapter) / "adapter_model.safetensors")
    energy = {"sound": [0.0, 0.0], "text": [0.0, 0.0]}  # before, after
    for key in [k for k in weights if k.endswith("lora_A.weight")]:
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        sound, text = (moments[kind][name].double() for kind in ("sound", "text"))
        a, b = weights[key].double(), weights[key.replace("lora_A", "lora_B")].double()
        a_kept = a @ sound @ torch.linalg.inv(sound + lam * text)
        for kind, moment in (("sound", sound), ("text", text)):
            for i, change in enumerate((b @ a, b @ a_kept)):
                energy[kind][i] += torch.trace(change @ moment @ change.T).item()
        weights[key] = a_kept.float().contiguous()
    save_file(weights, into / "adapter_model.safetensors")
    return energy["sound"][1] / energy["sound"][0], energy["text"][1] / energy["text"][0]


def text_unchanged(model, tokenizer, base_answers: list[str]) -> int:
    """How many of the report's text questions `model` answers as the base LLM did (normalised, greedy)."""
    replies = [text_reply(model, tokenizer, q) for q in TEXT_QUESTIONS]
    return sum(normalize_text(a) == normalize_text(r) for a, r in zip(base_answers, replies, strict=True))


def project(args: argparse.Namespace) -> None:
    base, tokenizer = load_llm(None)
    base_answers = [text_reply(base, tokenizer, q) for q in TEXT_QUESTIONS]
    clips = read_clips(DATA / "val.jsonl", limit=args.clips)
    moments = input_moments(args.adapter, args.conversations)
    print("| λ | energy kept, sound positions | energy kept, typed text | text unchanged, merged | LLM WER |")
    print("|---|---:|---:|---:|---:|")
    for lam in [0.0, *args.lambdas]:
        with tempfile.TemporaryDirectory() as folder:
            adapter = args.adapter if lam == 0 else Path(folder) / "adapter"
            kept = (1.0, 1.0) if lam == 0 else projected(args.adapter, moments, lam, adapter)
            chat = SpeechChat.from_pretrained(checkpoint=TOKENIZER, adapter=adapter, keep_base=False)
            same = text_unchanged(chat.model, chat.tokenizer, base_answers)
            heard = [chat.transcribe(clip.audio, max_new_tokens=96) for clip in clips]
        wer = corpus_word_error_rate([clip.text for clip in clips], heard)
        print(f"| {lam:g} | {kept[0]:.3f} | {kept[1]:.4f} | {same} of {len(TEXT_QUESTIONS)} | {wer:.1%} |", flush=True)


@torch.no_grad()
def randomized(model: LlamaForCausalLM, dims: int, neurons: int, heads: int, sound_rows: int) -> LlamaForCausalLM:
    """`model` widened (lm/widening.py) with every entry that would train set at random, as no training would
    leave them; the last `sound_rows` embeddings stand in for sound tokens."""
    first_sound = model.config.vocab_size - sound_rows
    widening = Widening.of(model.config, dims, neurons, heads, first_sound)
    wide = widen(model, widening)
    masks = trainable_masks(wide, widening)
    for name, parameter in wide.named_parameters():
        if name in masks:
            parameter[masks[name]] = torch.randn(int(masks[name].sum())) * 0.02
    return wide


def widened_text(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    base, tokenizer = load_llm(None)
    base_answers = [text_reply(base, tokenizer, q) for q in TEXT_QUESTIONS]
    with tempfile.TemporaryDirectory() as folder:
        randomized(base, args.dims, args.neurons, args.heads, STAND_IN_SOUND_ROWS).save_pretrained(folder)
        wide = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gaps = []
    for question in TEXT_QUESTIONS:
        turn = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(turn, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gap = base(ids["input_ids"]).logits - wide(ids["input_ids"]).logits
            gaps.append(gap[..., :-STAND_IN_SOUND_ROWS].abs().max().item())
    same = text_unchanged(wide, tokenizer, base_answers)
    print(f"widened by {args.dims} dims, {args.neurons} neurons and {args.heads} heads, loaded with plain transformers: {same} of "
          f"{len(TEXT_QUESTIONS)} text answers identical, largest logit gap {max(gaps):.1e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True)
    projection = commands.add_parser("project", help="the adapter projected off text: text kept, listening lost")
    projection.add_argument("--adapter", default=SHIPPED_ADAPTER)
    projection.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    projection.add_argument("--conversations", type=int, default=96, help="spoken and typed, each")
    projection.add_argument("--clips", type=int, default=24, help="validation clips transcribed")
    projection.set_defaults(run=project)
    widening = commands.add_parser("widen", help="a wider LLM whose new weights text cannot reach")
    widening.add_argument("--dims", type=int, default=72, help="keep the hidden size a multiple of the heads")
    widening.add_argument("--neurons", type=int, default=128)
    widening.add_argument("--heads", type=int, default=1, help="new key/value heads, each with 3 query heads")
    widening.set_defaults(run=widened_text)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.run(args)


if __name__ == "__main__":
    main()
