"""The speech-LLM recipes (`pretrain`, `sft`) on a tiny Llama and a tiny random speech tokenizer: pretraining
overfits and its adapter, loaded by load_llm, transcribes through SpeechChat; the SFT loss mask covers the
assistant's tokens only and noise clips ask for the refusal; packed conversations do not see each other; a run
killed mid-way resumes to bit-identical weights; a 2-process torchrun (FSDP2 on gloo) matches 1 process."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from auralm.checkpoints import load_whisper
from auralm.data import DataError, read_examples
from auralm.lm import SpeechChat, SpeechTokenizerMismatchError, add_sound_tokens, load_llm
from auralm.tokenizer import SpeechTokenizer, TokenizerConfig
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT, heard_reply
from auralm.training import replies as replies_module
from auralm.training import sft as sft_module
from auralm.training.chat_dataset import IGNORE, PackedSequences, chat_tokens, collate_packs, user_turn
from auralm.training.checkpointing import Checkpoints
from auralm.training.config import ConfigError
from auralm.training.llm_recipe import LLMRecipe
from auralm.training.replies import BaseReplies
from auralm.training.sft import SFTConfig, read_conversations, with_heard_lines
from tests.conftest import DATA, TEXTS
from tests.training.conftest import AURALM, CLIPS, QUESTION, REFUSAL, asr_manifest, tiny_speech_tokenizer


@pytest.fixture(scope="module")
def chat_manifest(tmp_path_factory) -> Path:
    """Spoken conversations (transcription requests; a question about a clip with a spoken follow-up turn),
    a text-only one, and one whose clip is missing; audio paths relative to the manifest."""
    folder = tmp_path_factory.mktemp("chat")
    lines = []
    for name in CLIPS:
        shutil.copy(DATA / name, folder / name)
        audio = {"type": "audio", "path": name}
        lines.append({"messages": [
            {"role": "user", "content": [audio, {"type": "text", "text": TRANSCRIBE_PROMPT}]},
            {"role": "assistant", "content": TEXTS[name]},
        ]})  # fmt: skip
        lines.append({"messages": [
            {"role": "system", "content": "hello"},
            {"role": "user", "content": [audio]},
            {"role": "assistant", "content": QUESTION},
            {"role": "user", "content": [{"type": "text", "text": "what is the dog ?"}, audio]},
            {"role": "assistant", "content": "the cat ."},
        ]})  # fmt: skip
    lines.append({"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello ."}]})
    lines.append({"messages": [
        {"role": "user", "content": [{"type": "audio", "path": "missing.wav"}]},
        {"role": "assistant", "content": "hello ."},
    ]})  # fmt: skip
    manifest = folder / "chat.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def asr_chat_manifest(folder: Path) -> Path:
    """The 7 clips as transcription conversations, for sft."""
    lines = [
        {"messages": [{"role": "user", "content": [{"type": "audio", "path": str(DATA / name)}, TRANSCRIBE_PROMPT]},
                      {"role": "assistant", "content": TEXTS[name]}]}
        for name in CLIPS
    ]  # fmt: skip
    path = folder / "asr-chat.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def train(recipe: str, *settings: str, extra_args: tuple[str, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    command = [*AURALM, "train", recipe, *settings, "progress=false", "--threads", "1", *extra_args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


def losses(run_dir: Path, name: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[name] for row in rows if name in row]


def test_pretrain_overfits_and_its_adapter_transcribes_through_speech_chat(
    tmp_path,
    speech_folder,
    llm_folder,
    tiny_whisper_file,
):
    run = tmp_path / "run"
    # bf16 autocast and packed rows: the defaults; validation on the clips it learns, so its loss must fall as far
    result = train(
        "pretrain", f"train={asr_manifest(tmp_path)}", f"tokenizer={speech_folder}", f"llm={llm_folder}",
        f"output_dir={run}", "max_tokens=400", "batch_size=2", "max_steps=60", "lr=0.01", "warmup_steps=5",
        "log_every=5", "lora_r=16", "merge=true", "instruction_first=0",  # one order: each clip learned as asked
        f"val={asr_manifest(tmp_path)}", "val_every=5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert losses(run)[-1] < 0.1, losses(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validated = [row["step"] for row in rows if "val_loss" in row]
    assert validated == list(range(5, 61, 5))  # every val_every steps (and at the end)
    val = losses(run, "val_loss")
    assert val[0] > 1 and val[-1] < 0.1, val

    model, tokenizer = load_llm(llm_folder, adapter=run / "adapter")
    speech = SpeechTokenizer.from_pretrained(speech_folder)
    chat = SpeechChat(model, tokenizer, speech)
    for name in ("en_16k.wav", "en_8k.wav"):
        assert chat.transcribe(DATA / name) == TEXTS[name]
    reply = chat.reply(
        [{"role": "user", "content": [{"type": "audio", "path": DATA / "en_8k.wav"}, TRANSCRIBE_PROMPT]}]
    )
    assert reply.finish_reason == "stop"  # it said the end-of-turn token, as it learned to
    assert reply.completion_tokens == len(TEXTS["en_8k.wav"].split()) + 1

    base = LlamaForCausalLM.from_pretrained(llm_folder)
    old = base.config.vocab_size
    assert torch.equal(model.get_input_embeddings().weight[:old], base.get_input_embeddings().weight)
    assert not torch.allclose(model.get_input_embeddings().weight[old:], base.get_input_embeddings().weight.mean(0))
    with pytest.raises(SpeechTokenizerMismatchError):  # the adapter records the speech tokenizer it learned
        SpeechChat(model, tokenizer, tiny_speech_tokenizer(tiny_whisper_file, seed=2))

    merged = SpeechChat(*load_llm(run / "merged"), speech)  # merge=true: the same model as a plain folder
    assert merged.transcribe(DATA / "en_16k.wav") == TEXTS["en_16k.wav"]

    # sft going on with the pretrain adapter (lr 0 here): one adapter on the plain LLM holds both stages
    sft = [f"train={asr_chat_manifest(tmp_path)}", f"llm={llm_folder}", f"adapter={run / 'adapter'}",
           "max_tokens=400", "batch_size=2", "max_steps=1", "lr=0", "noise_ratio=0"]  # fmt: skip
    result = train("sft", *sft, f"tokenizer={speech_folder}", f"output_dir={tmp_path / 'sft'}")
    assert result.returncode == 0, result.stderr
    continued = SpeechChat(*load_llm(llm_folder, adapter=tmp_path / "sft" / "adapter"), speech)
    assert continued.transcribe(DATA / "en_16k.wav") == TEXTS["en_16k.wav"]
    other = tiny_speech_tokenizer(tiny_whisper_file, seed=2).save_pretrained(tmp_path / "other-tok")
    result = train("sft", *sft, f"tokenizer={other}", f"output_dir={tmp_path / 'other'}")
    assert result.returncode == 2 and "trained on another speech tokenizer's codes" in result.stderr
    # allowed (a tokenizer fine-tuned from the adapter's): it goes on from that adapter, and pairs with the new one
    result = train("sft", *sft, f"tokenizer={other}", f"output_dir={tmp_path / 'other'}", "allow_mismatch=true")
    assert result.returncode == 0, result.stderr
    SpeechChat(*load_llm(llm_folder, adapter=tmp_path / "other" / "adapter"), SpeechTokenizer.from_pretrained(other))
    lora = load_file(tmp_path / "other" / "adapter" / "adapter_model.safetensors")
    before = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(lora[k], before[k]) for k in before if "lora_" in k)  # lr 0: pretrain's LoRA, kept


def test_full_training_writes_a_whole_model(tmp_path, speech_folder, llm_folder):
    run = tmp_path / "run"
    result = train(
        "pretrain", f"train={asr_manifest(tmp_path)}", f"tokenizer={speech_folder}", f"llm={llm_folder}",
        f"output_dir={run}", "full=true", "max_tokens=400", "batch_size=2", "max_steps=2", "warmup_steps=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (run / "adapter").exists()
    model, tokenizer = load_llm(run / "merged")
    base = LlamaForCausalLM.from_pretrained(llm_folder)
    old = base.config.vocab_size
    assert not torch.equal(model.get_input_embeddings().weight[:old], base.get_input_embeddings().weight)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    SpeechChat(model, tokenizer, SpeechTokenizer.from_pretrained(speech_folder))  # the config records its tokenizer


def test_pretrain_reads_an_auralm_export_of_its_own_tokenizer_only(
    tmp_path, speech_folder, llm_folder, tiny_whisper_file
):
    manifest = asr_manifest(tmp_path)
    export = subprocess.run(
        [*AURALM, "export", str(manifest), "--out", str(tmp_path / "tokens"), "--checkpoint", str(speech_folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    exported = {e.audio: e for e in read_examples(tmp_path / "tokens")}
    # texts= picks a subset of the export (clips an earlier run did not see), with that manifest's transcripts
    lines = [json.loads(line) | {"text": f"clip {i}"} for i, line in enumerate(manifest.read_text().splitlines()[2:5])]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(line) + "\n" for line in lines))
    chosen = read_examples(tmp_path / "tokens", texts=subset)
    assert [(e.audio, e.text) for e in chosen] == [(line["audio"], line["text"]) for line in lines]
    assert all((e.codes == exported[e.audio].codes).all() for e in chosen)
    settings = (f"llm={llm_folder}", "max_tokens=400", "batch_size=2", "max_steps=2", "warmup_steps=1", "log_every=1")
    run = tmp_path / "run"
    result = train(
        "pretrain", f"train={tmp_path / 'tokens'}", f"tokenizer={speech_folder}", f"output_dir={run}", *settings
    )
    assert result.returncode == 0, result.stderr
    assert not list(run.glob("codes/**/*.npy"))  # the export's codes, not the tokenizer's, fed the run
    assert len(losses(run)) == 2

    other = tiny_speech_tokenizer(tiny_whisper_file, seed=2).save_pretrained(tmp_path / "other-tok")
    result = train(
        "pretrain", f"train={tmp_path / 'tokens'}", f"tokenizer={other}", f"output_dir={tmp_path / 'o'}", *settings
    )
    assert result.returncode == 2 and "exported with another speech tokenizer" in result.stderr


def expected_mask(tokens: list[str]) -> list[bool]:
    """The assistant's tokens under the tests' template, read off the rendering: from after each
    `<|assistant|>` through the `<eos>` that ends its turn."""
    mask, inside = [], False
    for token in tokens:
        mask.append(inside)
        if token == "<|assistant|>":
            inside = True
        elif token == "<eos>":
            inside = False
    return mask


def assistant_turns(learned_tokens: list[str]) -> list[str]:
    """The replies in the learned tokens, each ended by its `<eos>`."""
    turns, words = [], []
    for token in learned_tokens:
        if token == "<eos>":
            turns.append(" ".join(words))
            words = []
        else:
            words.append(token)
    assert not words, "learned tokens after the last end of turn"
    return turns


def test_sft_learns_only_assistant_tokens_noise_asks_for_the_refusal_and_packs_stay_apart(
    tmp_path, speech_folder, untied_llm_folder, chat_manifest
):
    config = SFTConfig(
        train=str(chat_manifest), tokenizer=str(speech_folder), llm=str(untied_llm_folder),
        output_dir=str(tmp_path / "run"), noise_ratio=1.0, max_tokens=600, batch_size=2, bf16=False, progress=False,
    )  # fmt: skip
    recipe = sft_module.recipe(config)
    recipe.setup()
    try:
        dataset = recipe.loader.dataset
        sequences = dataset.sequences
        spoken = 2 * len(CLIPS)
        assert len(sequences) == spoken + 1 + round(1.0 * (spoken + 1))  # the missing clip's line is left out…
        assert recipe.skipped.counts() == {"audio missing": 1}  # …and counted
        replies = []
        for sequence in sequences:
            tokens = recipe.tokenizer.convert_ids_to_tokens(sequence.ids.tolist())
            assert sequence.learned.tolist() == expected_mask(tokens)
            replies.append(assistant_turns([t for t, learned in zip(tokens, sequence.learned, strict=True) if learned]))
        assert replies[:spoken] == [turns for name in CLIPS for turns in ([TEXTS[name]], [QUESTION, "the cat ."])]
        assert replies[spoken] == ["hello ."]
        assert replies[spoken + 1 :] == [[REFUSAL]] * (spoken + 1)

        # the prompt is the one SpeechChat gives the model for the same conversation
        chat = SpeechChat(recipe.model, recipe.tokenizer, recipe.speech)
        messages = [{"role": "user", "content": [{"type": "audio", "path": str(DATA / CLIPS[1])}, TRANSCRIBE_PROMPT]}]
        first = sequences[2].learned.argmax()
        assert sequences[2].ids[:first].tolist() == chat.prompt_ids(messages)

        # a packed row computes each conversation as if alone: its loss is the sum of theirs
        packed = next(pack for pack in dataset.packs if len(pack) >= 3)
        alone = collate_packs(list(PackedSequences(sequences, [[i] for i in packed])), pad_id=0)
        together = collate_packs(list(PackedSequences(sequences, [packed])), pad_id=0)
        assert (together.targets != IGNORE).sum() == (alone.targets != IGNORE).sum()
        with torch.no_grad():
            torch.testing.assert_close(recipe.loss_sum(together), recipe.loss_sum(alone), rtol=1e-5, atol=1e-4)
            # the head, given only the learned positions, gives the logits the whole row's would have there
            every = recipe.model(input_ids=together.ids, position_ids=together.positions, use_cache=False).logits
            torch.testing.assert_close(recipe._target_logits(together), every[together.targets != IGNORE])
    finally:
        recipe.cleanup()


def test_sft_puts_the_request_before_the_clip_in_instruction_first_of_the_turns(
    tmp_path, speech_folder, untied_llm_folder, chat_manifest
):
    orders = {}
    for share in (0.0, 0.5, 1.0):
        config = SFTConfig(
            train=str(chat_manifest), tokenizer=str(speech_folder), llm=str(untied_llm_folder), noise_ratio=0.0,
            output_dir=str(tmp_path / f"run-{share}"), instruction_first=share, batch_size=2, bf16=False,
            progress=False,
        )  # fmt: skip
        recipe = sft_module.recipe(config)
        recipe.setup()
        try:
            chat = SpeechChat(recipe.model, recipe.tokenizer, recipe.speech)
            sequences = recipe.loader.dataset.sequences
            orders[share] = []
            for number, name in enumerate(CLIPS):  # each clip's transcription request, then its two-turn talk
                audio = {"type": "audio", "path": str(DATA / name)}
                parts = {True: [TRANSCRIBE_PROMPT, audio], False: [audio, TRANSCRIBE_PROMPT]}
                prompts = {first: chat.prompt_ids([{"role": "user", "content": p}]) for first, p in parts.items()}
                request = sequences[2 * number]
                said = request.ids[: request.learned.argmax()].tolist()
                assert said in prompts.values()  # the manifest's turn, in one order or the other
                orders[share].append(said == prompts[True])
        finally:
            recipe.cleanup()
    assert orders[0.0] == [False] * len(CLIPS) and orders[1.0] == [True] * len(CLIPS)
    assert set(orders[0.5]) == {True, False}


def test_heard_first_leads_replies_to_a_clip_with_its_transcript_from_the_manifest(chat_manifest):
    manifest = read_conversations(chat_manifest)
    replies = [["".join(m["content"]) for m in c["messages"] if m["role"] == "assistant"]
               for c in with_heard_lines(manifest)]  # fmt: skip
    expected = []
    for name in CLIPS:  # its transcription as it was; its talk's two replies led by the transcript
        expected += [[TEXTS[name]], [heard_reply(TEXTS[name], QUESTION), heard_reply(TEXTS[name], "the cat .")]]
    assert replies == [*expected, ["hello ."], ["hello ."]]  # text-only, and a clip never transcribed: as they were
    assert [c["messages"] for c in manifest] == [c["messages"] for c in read_conversations(chat_manifest)]  # unchanged


def test_a_clip_has_one_cache_key_whichever_manifest_names_it(tmp_path, monkeypatch, tiny_tokenizer):
    from auralm.data import ArrowAudio, Example
    from auralm.training.chat_dataset import CodeCache

    cache = CodeCache(tmp_path / "codes", tiny_tokenizer)
    monkeypatch.chdir(DATA.parent)
    pretrain = Example(id="000001", text="hi", audio=f"{DATA.name}/en_16k.wav")  # a manifest's relative path
    sft = Example(id=str(DATA / "en_16k.wav"), text="", audio=str(DATA / "en_16k.wav"))  # sft's: absolute
    assert cache.key(pretrain) == cache.key(sft)
    assert cache.key(pretrain) != cache.key(Example(id="000001", text="hi", audio=str(DATA / "en_8k.wav")))
    rows = [Example(id=name, text="", audio=ArrowAudio(None, 0)) for name in ("a", "b")]  # row 0 of two datasets
    assert cache.key(rows[0]) != cache.key(rows[1])


def test_clips_whose_encoder_frames_a_tokenizer_run_cached_are_quantized_from_them(tmp_path, tiny_tokenizer):
    """The LLM recipes' codes from a tokenizer run's cached frames (frames_cache=) are the clips' own codes, and
    come without their audio: the encoder is not run again."""
    from auralm.data import Example
    from auralm.distributed import World
    from auralm.training.audio_dataset import AudioTextDataset
    from auralm.training.chat_dataset import CodeCache
    from auralm.training.features import FeatureCache

    world = World(0, 1, torch.device("cpu"))
    clips = []
    for name in ("en_16k.wav", "en_8k.wav"):
        shutil.copy(DATA / name, tmp_path / name)
        clips.append(Example(id=name, text="", audio=str(tmp_path / name)))
    expected = [tiny_tokenizer.encode(clip.audio).numpy() for clip in clips]
    frames = FeatureCache(tmp_path / "features", tiny_tokenizer)
    window = tiny_tokenizer.config.window_seconds
    frames.build(AudioTextDataset(clips, window_seconds=window), world, progress=False)
    for clip in clips:
        Path(clip.audio).unlink()  # only the cached frames can give the codes now

    codes, skipped = CodeCache(tmp_path / "codes", tiny_tokenizer, frames).build(clips, world, progress=False)
    assert not skipped.reasons
    for got, want in zip(codes, expected, strict=True):
        assert got.tolist() == want.tolist()


def test_sft_text_replies_from_the_base_llm_keep_its_own_answers(tmp_path, speech_folder, llm_folder, chat_manifest):
    config = SFTConfig(
        train=str(chat_manifest), tokenizer=str(speech_folder), llm=str(llm_folder), output_dir=str(tmp_path / "run"),
        noise_ratio=0.0, max_tokens=600, batch_size=2, bf16=False, progress=False, text_replies="base",
        text_reply_tokens=4,
    )  # fmt: skip
    # what the LLM says to the manifest's text-only prompt before training, computed here on its own
    model, tokenizer = load_llm(llm_folder)
    add_sound_tokens(model, tokenizer, SpeechTokenizer.from_pretrained(speech_folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)  # fmt: skip
    out = model.generate(**prompt, do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert expected != "hello ."  # the manifest's reply: replaced

    def text_only_reply(recipe: LLMRecipe) -> str:
        sequence = recipe.loader.dataset.sequences[2 * len(CLIPS)]
        return recipe.tokenizer.decode(sequence.ids[sequence.learned.astype(bool)], skip_special_tokens=True).strip()

    recipe = sft_module.recipe(config)
    recipe.setup()
    assert text_only_reply(recipe) == expected
    recipe.cleanup()

    def asks_again(*args):
        raise AssertionError("the kept replies were asked for again")

    again = sft_module.recipe(config, resume=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseReplies, "generate", asks_again)  # the kept replies serve a resumed run
        again.setup()
    assert text_only_reply(again) == expected
    again.cleanup()
    with pytest.raises(ConfigError, match="text_replies=teacher"):
        sft_module.recipe(dataclasses.replace(config, text_replies="teacher"))


def test_sft_spoken_replies_from_the_base_llm_answer_the_clips_typed(
    tmp_path, monkeypatch, speech_folder, llm_folder, chat_manifest
):
    """spoken_replies=base: each reply to a clip that says more than the clip's transcript is the LLM's own greedy
    reply before training to the conversation so far typed, each clip as its transcript (then led by the heard
    line); a transcription reply, and a clip the manifest never transcribes, keep the manifest's."""
    config = SFTConfig(
        train=str(chat_manifest), tokenizer=str(speech_folder), llm=str(llm_folder), output_dir=str(tmp_path / "run"),
        noise_ratio=0.0, batch_size=2, bf16=False, progress=False, spoken_replies="base", heard_first=True,
        text_reply_tokens=4,
    )  # fmt: skip
    asked: dict[str, str] = {}
    generate = BaseReplies.generate

    def noted(self, prompts):
        replies = generate(self, prompts)
        asked.update(zip((json.dumps(prompt) for prompt in prompts), replies, strict=True))
        return replies

    monkeypatch.setattr(BaseReplies, "generate", noted)
    recipe = sft_module.recipe(config)
    recipe.setup()
    try:
        conversations, _ = recipe.data.conversations(recipe)
    finally:
        recipe.cleanup()

    expected, prompts = [], set()
    for name in CLIPS:
        said = TEXTS[name]
        first_prompt = [{"role": "system", "content": "hello"}, {"role": "user", "content": said}]
        first = asked[json.dumps(first_prompt)]
        second_prompt = [*first_prompt, {"role": "assistant", "content": first},
                         {"role": "user", "content": f"what is the dog ?\n{said}"}]  # fmt: skip
        second = asked[json.dumps(second_prompt)]
        expected += [[said], [heard_reply(said, first), heard_reply(said, second)]]
        prompts |= {json.dumps(first_prompt), json.dumps(second_prompt)}
    replies = [["".join(m["content"]) for m in c if m["role"] == "assistant"] for c in conversations]
    assert replies == [*expected, ["hello ."]]  # the missing clip's line is left out, the text-only one as it was
    assert set(asked) == prompts  # nothing else asked: not the transcription requests, not the text-only turn


def test_base_replies_asked_before_a_kill_are_kept(tmp_path, monkeypatch, speech_folder, llm_folder):
    questions = ["hello", "what is the dog ?", "the cat ."]
    manifest = tmp_path / "text.jsonl"
    manifest.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "?"}]}) + "\n"
        for q in questions
    ))  # fmt: skip
    config = SFTConfig(
        train=str(manifest), tokenizer=str(speech_folder), llm=str(llm_folder), output_dir=str(tmp_path / "run"),
        noise_ratio=0.0, batch_size=1, bf16=False, progress=False, text_replies="base", text_reply_tokens=2,
    )  # fmt: skip
    monkeypatch.setattr(replies_module, "REPLY_BATCH", 1)
    asked: list[str] = []

    def killed_after_one_batch(self, prompts):
        if asked:
            raise KeyboardInterrupt
        asked.extend(p[-1]["content"] for p in prompts)
        return ["reply"] * len(prompts)

    recipe = sft_module.recipe(config)
    monkeypatch.setattr(BaseReplies, "generate", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        recipe.setup()
    assert len(json.loads((tmp_path / "run" / "text_replies.json").read_text())) == 1

    def answers(self, prompts):
        asked.extend(p[-1]["content"] for p in prompts)
        return ["reply"] * len(prompts)

    again = sft_module.recipe(config, resume=True)
    monkeypatch.setattr(BaseReplies, "generate", answers)
    again.setup()
    again.cleanup()
    assert sorted(asked) == sorted(questions)  # each asked once, across the kill


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ({"messages": [{"role": "user", "content": "hello"}]}, "no assistant turn"),
        ({"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "x"}]}, "starts with"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "message 1: a message is"),
        ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "unsupported part"),
        ({"messages": [{"role": "assistant", "content": [{"type": "audio", "path": "a.wav"}]}]}, "audio belongs"),
        ({"text": "hello"}, 'expected {"messages"'),
    ],
)
def test_a_bad_sft_line_is_named(tmp_path, line, says):
    manifest = tmp_path / "chat.jsonl"
    manifest.write_text(
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
        + "\n"
        + json.dumps(line)
        + "\n"
    )
    with pytest.raises(DataError, match=f"chat.jsonl:2: .*{re.escape(says)}"):
        read_conversations(manifest)


def sft_run(tmp_path: Path, name: str, speech: Path, llm: Path, manifest: Path, *extra: str) -> list[str]:
    """A fast SFT run: fp32 for exactness, a shared cache of sound codes."""
    return [
        f"train={manifest}", f"tokenizer={speech}", f"llm={llm}", f"output_dir={tmp_path / name}",
        f"code_cache={tmp_path / 'codes'}", "noise_ratio=0.5", "max_tokens=400", "batch_size=2", "bf16=false",
        "log_every=1", "warmup_steps=2", "lr=0.003", *extra,
    ]  # fmt: skip


def test_sft_resumed_after_a_kill_ends_bit_identical(tmp_path, speech_folder, untied_llm_folder, chat_manifest):
    settings = (speech_folder, untied_llm_folder, chat_manifest, "max_steps=40", "save_every=1")
    whole = train("sft", *sft_run(tmp_path, "whole", *settings))
    assert whole.returncode == 0, whole.stderr

    command = [*AURALM, "train", "sft", *sft_run(tmp_path, "killed", *settings), "progress=false", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = Checkpoints(tmp_path / "killed" / "checkpoints")
    deadline = time.monotonic() + 300
    while len(checkpoints.steps()) < 1 or checkpoints.steps()[-1].name < "step-00000008":
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoints.latest()["step"]
    assert 8 <= killed_at < 40

    again = train("sft", *sft_run(tmp_path, "killed", *settings), extra_args=("--resume",))
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {killed_at}" in again.stdout
    ours = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    assert any("lm_head" in key for key in ours)  # untied: the output rows of the sound tokens train too
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert losses(tmp_path / "killed")[-(40 - killed_at) :] == losses(tmp_path / "whole")[killed_at:]


def test_a_copy_of_a_stopped_run_resumed_with_a_nearer_end_cools_down(
    tmp_path, speech_folder, llm_folder, chat_manifest
):
    """Warmup-stable-decay: a long run at its peak, stopped, copied and resumed with max_steps 4 steps on, falls
    linearly to a tenth of its lr over those 4 steps (the schedule comes from the settings, not the checkpoint)."""
    settings = (speech_folder, llm_folder, chat_manifest, "decay_steps=4")
    command = [*AURALM, "train", "sft", *sft_run(tmp_path, "run", *settings, "max_steps=1000"), "progress=false"]
    process = subprocess.Popen([*command, "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 300
    while not metrics.exists() or len(losses(tmp_path / "run")) < 6:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # as a session's end stops it: the step under way finishes and is saved
    assert process.wait(timeout=120) == 0
    stopped = Checkpoints(tmp_path / "run" / "checkpoints").latest()["step"]
    shutil.copytree(tmp_path / "run", tmp_path / "cool")

    cool = train("sft", *sft_run(tmp_path, "cool", *settings, f"max_steps={stopped + 4}"), extra_args=("--resume",))
    assert cool.returncode == 0, cool.stderr
    rows = [json.loads(line) for line in (tmp_path / "cool" / "metrics.jsonl").read_text().splitlines()]
    lrs = {row["step"]: row["lr"] for row in rows if "lr" in row}  # each step's rate for the step after it
    assert lrs[stopped] == pytest.approx(0.003)  # the peak (sft_run's lr), held until the stop
    cooled = [lrs[step] for step in range(stopped + 1, stopped + 5)]
    assert cooled == pytest.approx([0.003 * f for f in (0.775, 0.55, 0.325, 0.1)])


def test_a_second_run_on_a_folder_in_training_stops_at_once(tmp_path, speech_folder, llm_folder, chat_manifest):
    settings = sft_run(tmp_path, "run", speech_folder, llm_folder, chat_manifest, "max_steps=2")
    # a process training in the folder: it holds the folder's lock, as every run does from its start
    hold = "import sys, time; from pathlib import Path; from auralm.training.loop import hold_run_folder; "
    hold += "hold_run_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        second = train("sft", *settings, extra_args=("--resume",))
        assert second.returncode == 2
        assert f"{tmp_path / 'run'} is being trained by another process (pid {holder.pid})" in second.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()  # it wrote nothing
    finally:
        holder.kill()  # killed, not stopped: the lock goes with the process
        holder.wait()
    after = train("sft", *settings)
    assert after.returncode == 0, after.stderr
    assert Checkpoints(tmp_path / "run" / "checkpoints").latest()["step"] == 2


@pytest.mark.parametrize(
    ("kind", "weights"),
    [
        ((), "adapter_model.safetensors"),
        (("widen_dims=20", "widen_neurons=32", "widen_head_rank=4"), "widening.safetensors"),
    ],
    ids=["lora", "widened"],  # the widened one's new head trained as products: every kind of part is sharded
)
def test_two_processes_match_one_with_the_same_global_batch(
    tmp_path, speech_folder, llm_folder, chat_manifest, kind, weights
):
    # one process accumulating 2 micro-batches sees exactly the slices 2 processes see
    # on CPU (gloo) wherever the test runs: one GPU cannot hold two ranks
    settings = (speech_folder, llm_folder, chat_manifest, "max_steps=4", "batch_size=4", "device=cpu", *kind)
    one = train("sft", *sft_run(tmp_path, "one", *settings, "micro_batches=2"))
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "auralm"]
    two = subprocess.run(
        [*torchrun, "train", "sft", *sft_run(tmp_path, "two", *settings), "progress=false", "--threads", "1"],
        capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert "2 process(es)" in two.stdout
    for name in ("loss", "grad_norm"):  # Adam hides a wrong gradient scale from the weights, not from the norm
        torch.testing.assert_close(
            torch.tensor(losses(tmp_path / "two", name)),
            torch.tensor(losses(tmp_path / "one", name)),
            rtol=1e-4,
            atol=1e-5,
        )
    ours = load_file(tmp_path / "two" / "adapter" / weights)
    theirs = load_file(tmp_path / "one" / "adapter" / weights)
    assert ours.keys() == theirs.keys()
    for key in ours:  # Adam divides by √v: a gradient near zero turns the ranks' summation order into ~1e-5 moves
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_smollm2_template_gives_the_assistant_its_replies_and_ends_of_turn():
    model, tokenizer = load_llm()  # the packaged default
    torch.manual_seed(0)
    speech = SpeechTokenizer(
        TokenizerConfig(whisper="tiny.en", n_state=384, n_head=6, n_codes=512), load_whisper("tiny.en")
    )
    add_sound_tokens(model, tokenizer, speech)
    clip = DATA / "en_8k.wav"
    conversation = [
        user_turn(speech.encode(clip).numpy(), TRANSCRIBE_PROMPT),
        {"role": "assistant", "content": "Hello there, friend."},
        {"role": "user", "content": "And again?"},
        {"role": "assistant", "content": "Yes."},
    ]
    tokens = chat_tokens(tokenizer, conversation)
    # the replies and their end-of-turn token, not the newline the template puts after it
    assert tokenizer.decode(tokens.ids[tokens.learned]) == "Hello there, friend.<|im_end|>Yes.<|im_end|>"
    first = tokens.learned.argmax()
    messages = [{"role": "user", "content": [{"type": "audio", "path": clip}, TRANSCRIBE_PROMPT]}]
    assert tokens.ids[:first].tolist() == SpeechChat(model, tokenizer, speech).prompt_ids(messages)
