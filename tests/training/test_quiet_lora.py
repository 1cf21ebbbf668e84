"""lora_quiet: an LLM recipe keeps every LoRA layer's A in the input directions typed text leaves quiet, and the
merged adapter then moves the LLM's text logits less than the same run without it (tiny Llama, real recipe CLI)."""

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from auralm.training.quiet_lora import lora_layers, quiet_directions, reply_pairs
from tests.training.conftest import asr_manifest
from tests.training.test_llm_recipes import train


def pretrain(folder: Path, speech: Path, llm: Path, *settings: str) -> Path:
    run = folder / "run"
    result = train(
        "pretrain", f"train={asr_manifest(folder)}", f"tokenizer={speech}", f"llm={llm}", f"output_dir={run}",
        "max_tokens=400", "batch_size=2", "max_steps=20", "lr=0.01", "warmup_steps=2", "merge=true", *settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run


def typed_pairs(folder: Path) -> list[list[dict]]:
    """The typed conversations the recipe measures on: pairs of its replies (the manifest's transcripts)."""
    return reply_pairs([json.loads(line)["text"] for line in (folder / "asr.jsonl").read_text().splitlines()])


def text_logit_drift(run: Path, llm: Path, pairs: list[list[dict]]) -> float:
    """Mean |merged − base| over the text vocabulary's logits at every position of the typed pairs."""
    tokenizer = AutoTokenizer.from_pretrained(llm)
    base, merged = LlamaForCausalLM.from_pretrained(llm), LlamaForCausalLM.from_pretrained(run / "merged")
    drifts = []
    with torch.no_grad():
        for messages in pairs:
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
            expected = base(input_ids=ids["input_ids"]).logits  # (1, L, V)
            got = merged(input_ids=ids["input_ids"]).logits[..., : expected.shape[-1]]
            drifts.append((got - expected).abs().mean())
    return float(torch.stack(drifts).mean())


def test_lora_reads_only_the_quiet_directions_and_the_merged_adapter_moves_text_less(
    tmp_path, speech_folder, llm_folder
):
    (tmp_path / "quiet").mkdir(), (tmp_path / "plain").mkdir()
    quiet_run = pretrain(tmp_path / "quiet", speech_folder, llm_folder, "lora_quiet=0.25")
    plain_run = pretrain(tmp_path / "plain", speech_folder, llm_folder)
    pairs = typed_pairs(tmp_path / "quiet")

    # the directions as the recipe measures them: the LLM with the run's adapter, switched off
    tokenizer = AutoTokenizer.from_pretrained(quiet_run / "adapter")
    llm = LlamaForCausalLM.from_pretrained(llm_folder)
    llm.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(llm, quiet_run / "adapter")
    quiet = quiet_directions(model, tokenizer, pairs, 0.25)
    layers = lora_layers(model)
    assert set(layers) == set(quiet) and len(layers) == 2 * 7  # 2 layers × q, k, v, o, gate, up, down
    for name, layer in layers.items():
        a, q = layer.lora_A["default"].weight, quiet[name]  # (r, d_in), (d_in, d_in / 4)
        assert q.shape == (a.shape[1], a.shape[1] // 4)
        assert a.norm() > 0.1, name  # it trained
        assert (a - a @ q @ q.T).norm() < 1e-4 * a.norm(), name  # and reads the quiet directions only

    quiet_drift, plain_drift = (text_logit_drift(run, llm_folder, pairs) for run in (quiet_run, plain_run))
    assert quiet_drift < 0.5 * plain_drift, (quiet_drift, plain_drift)
