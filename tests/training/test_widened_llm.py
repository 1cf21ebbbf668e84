"""widen_dims=: an LLM recipe trains the LLM widened for sound instead of LoRA (tiny Llama, real recipe CLI). It
overfits, and its adapter and the merged folder transcribe through SpeechChat; only the new entries move; the adapter
folder holds just those; merged, it is a plain Llama that gives typed text the base LLM's logits; sft goes on from
its adapter; settings it cannot honour are refused."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from auralm.lm import SpeechChat, load_llm
from auralm.lm.widening import WIDENING_FILE, WIDENING_WEIGHTS, Widening, cut_parts, trainable_masks
from auralm.tokenizer import SpeechTokenizer
from auralm.training.widened_llm import split_widened, widened_parts
from tests.conftest import DATA, TEXTS
from tests.lm.conftest import tiny_llama
from tests.lm.test_widening import FIRST_SOUND, set_entries, widened
from tests.training.conftest import asr_manifest
from tests.training.test_llm_recipes import asr_chat_manifest, losses, train
from tests.training.test_quiet_lora import text_logit_drift, typed_pairs

WIDE = ("widen_dims=20", "widen_neurons=32", "widen_heads=1")  # 64 + 20 divides by 4 + 2 query heads


@pytest.mark.parametrize(("tied", "head_rank"), [(True, 0), (False, 0), (True, 2)])
def test_a_split_model_computes_as_the_widened_one_and_only_its_parts_get_gradients(tied, head_rank):
    wide, widening = widened(tiny_llama(tied, initializer_range=1.0), head_rank=head_rank)
    set_entries(wide, widening, seed=3)
    split = split_widened(copy.deepcopy(wide), widening)
    masks = trainable_masks(wide, widening)
    wide.requires_grad_(True)
    ids = torch.tensor([[4, 5, FIRST_SOUND, FIRST_SOUND + 2, 6, 7], [FIRST_SOUND + 1, 2, 3, 8, FIRST_SOUND, 9]])
    (wide(ids).logits ** 2).mean().backward()
    logits = split(ids).logits
    (logits**2).mean().backward()
    assert torch.allclose(logits, wide(ids).logits, atol=1e-4)

    trainable = {name: p for name, p in split.named_parameters() if p.requires_grad}
    parts = widened_parts(split, {name: p.grad for name, p in trainable.items()})
    assert len(parts) == len(trainable)  # a tied head's parts are the embedding's, named once
    assert parts.keys() == cut_parts(wide.state_dict(), widening).keys()  # as an adapter folder keeps them
    if not head_rank:
        assert sum(p.numel() for p in trainable.values()) == sum(int(mask.sum()) for mask in masks.values())
    factors = widened_parts(split, {name: p.detach() for name, p in trainable.items()})
    for key, grad in parts.items():
        name, _, index = key.rpartition("@")
        if index.isdigit():
            expected = wide.get_parameter(name).grad[widening.new_parts(name)[int(index)]]
        else:  # a product's factor: the whole entries' gradient through the other factor
            product, _, side = index.partition(".")
            whole = wide.get_parameter(name).grad[widening.new_products(name)[int(product.removeprefix("product"))]]
            inward, outward = factors[f"{name}@{product}.in"], factors[f"{name}@{product}.out"]
            expected = outward.T @ whole if side == "in" else whole @ inward.T
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-4), key


def test_a_widened_run_learns_to_transcribe_and_merged_keeps_text_exactly(tmp_path, speech_folder, llm_folder):
    run = tmp_path / "run"
    result = train(
        "pretrain", f"train={asr_manifest(tmp_path)}", f"tokenizer={speech_folder}", f"llm={llm_folder}",
        f"output_dir={run}", "max_tokens=400", "batch_size=2", "max_steps=80", "lr=0.03", "warmup_steps=5",
        "log_every=10", "merge=true", "instruction_first=0", *WIDE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert losses(run)[-1] < 0.1, losses(run)  # without the new head: 3.8 (text after a clip steered by old heads only)
    adapter = run / "adapter"
    assert (adapter / WIDENING_FILE).is_file() and not (adapter / "adapter_config.json").exists()

    speech = SpeechTokenizer.from_pretrained(speech_folder)
    chat = SpeechChat(*load_llm(llm_folder, adapter=adapter), speech)
    merged_chat = SpeechChat(*load_llm(run / "merged"), speech)  # merge=true: the same model as a plain folder
    for name in ("en_16k.wav", "en_8k.wav"):
        assert chat.transcribe(DATA / name) == merged_chat.transcribe(DATA / name) == TEXTS[name]

    merged = LlamaForCausalLM.from_pretrained(run / "merged")  # plain transformers, no auralm
    base = LlamaForCausalLM.from_pretrained(llm_folder)
    assert merged.config.hidden_size == base.config.hidden_size + 20
    first_sound = base.config.vocab_size
    masks = trainable_masks(merged, Widening.of(base.config, 20, 32, 1, first_sound))
    for name, weight in merged.named_parameters():  # what text reads is the base LLM's, unmoved
        old = base.state_dict()[name]
        kept = weight[tuple(slice(0, n) for n in old.shape)]
        if name in masks:
            kept = kept[~masks[name][tuple(slice(0, n) for n in old.shape)]]
            old = old[~masks[name][tuple(slice(0, n) for n in old.shape)]]
        if name.endswith("norm.weight"):  # rescaled for the wider mean; the new entries stay 1
            assert torch.equal(weight[old.shape[0] :], torch.ones(20)), name
        else:
            assert torch.equal(kept, old), name
    assert text_logit_drift(run, llm_folder, typed_pairs(tmp_path)) < 1e-4
    saved = sum(t.numel() for t in load_file(adapter / WIDENING_WEIGHTS).values())
    assert saved == sum(int(m.sum()) for m in masks.values())

    # sft going on from the widened adapter (lr 0): the same model comes out, still widened
    sft = [f"train={asr_chat_manifest(tmp_path)}", f"llm={llm_folder}", f"adapter={adapter}", "max_tokens=400",
           "batch_size=2", "max_steps=1", "lr=0", "noise_ratio=0", f"tokenizer={speech_folder}"]  # fmt: skip
    result = train("sft", *sft, f"output_dir={tmp_path / 'sft'}")
    assert result.returncode == 0, result.stderr
    continued = load_file(tmp_path / "sft" / "adapter" / WIDENING_WEIGHTS)
    assert all(torch.equal(t, load_file(adapter / WIDENING_WEIGHTS)[k]) for k, t in continued.items())


def test_settings_a_widened_run_cannot_honour_are_refused(tmp_path, speech_folder, llm_folder):
    common = [f"train={asr_manifest(tmp_path)}", f"tokenizer={speech_folder}", f"llm={llm_folder}",
              f"output_dir={tmp_path / 'run'}", "max_tokens=400", "batch_size=2", "max_steps=1", *WIDE]  # fmt: skip
    for setting, says in (("full=true", "full is for the other"), ("lora_quiet=0.25", "lora_quiet is for the other")):
        result = train("pretrain", *common, setting)
        assert result.returncode == 2 and says in result.stderr, result.stderr
