"""The distill recipe on a tiny Llama and a tiny random speech tokenizer: the student's replies are the teacher's
own, typed conversations start at zero divergence (the adapter begins as the identity and the teacher is the LLM
without it), training brings the student's distribution on clips toward the teacher's on their transcripts, the
teacher's replies are asked once across a resume, a widened student (its own teacher) keeps typed text exactly,
and the CLI runs it."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT
from auralm.training import distill
from auralm.training.chat_dataset import DistillBatch, PackedSequences, collate_pairs
from auralm.training.config import ConfigError
from auralm.training.replies import BaseReplies
from auralm.training.validation import ValidationSet
from tests.training.conftest import AURALM, asr_manifest


@pytest.fixture
def config(tmp_path, speech_folder, llm_folder) -> distill.DistillConfig:
    return distill.DistillConfig(
        train=str(asr_manifest(tmp_path)), tokenizer=str(speech_folder), llm=str(llm_folder),
        output_dir=str(tmp_path / "run"), instructions=["", "Answer briefly."], reply_tokens=4, text_ratio=0.5,
        kl_temperature=1.0, reply_ce_weight=0.0, batch_size=4, max_steps=40, lr=0.01, warmup_steps=2, log_every=5, bf16=False,
        max_tokens=400, pack=False, progress=False, save_every=1000,
    )  # fmt: skip


def pairs_loss(recipe, indices: list[int]) -> float:
    """The KL per target token of the given conversations (each in a row of its own), as the recipe computes it."""
    students, teachers = recipe.loader.dataset.students.sequences, recipe.loader.dataset.teachers.sequences
    items = [(PackedSequences(students, [[i]])[0], PackedSequences(teachers, [[i]])[0]) for i in indices]
    batch: DistillBatch = collate_pairs(items, recipe.tokenizer.pad_token_id)
    with torch.no_grad():
        return float(recipe.loss_sum(batch)) / int((batch.targets != -100).sum())


def test_the_student_learns_the_teachers_answers_and_typed_text_stays(config):
    recipe = distill.recipe(config)
    recipe.setup()
    try:
        replies = json.loads((recipe.run_dir / "teacher_replies.json").read_text())
        assert len(replies) == 8  # one prompt per clip (typed ones reuse their clip's prompt)
        assert all(isinstance(reply, str) for reply in replies.values())
        students, teachers = recipe.loader.dataset.students, recipe.loader.dataset.teachers
        assert len(students.sequences) == 8 + 4  # the 8 clips, and half of them typed
        sound = [f"<|sound_{i:04d}|>" for i in range(recipe.speech.config.vocab_size)]
        codes = set(recipe.tokenizer.convert_tokens_to_ids(sound))
        for student, teacher in zip(students.sequences, teachers.sequences, strict=True):
            assert np.array_equal(student.ids[student.learned], teacher.ids[teacher.learned])
            assert not codes & set(teacher.ids.tolist())  # the teacher reads text only
        spoken, typed = list(range(8)), list(range(8, 12))
        assert pairs_loss(recipe, typed) < 1e-6  # the adapter starts as the identity: on text, student = teacher
        before = pairs_loss(recipe, spoken)
        assert before > 0.05
        # val= scores rows as the step does: here the training rows, 5 to a batch, are their one-batch loss
        validation = ValidationSet(recipe.loader.dataset, collate_pairs, 5, recipe.tokenizer.pad_token_id)
        assert validation.loss(recipe.loss_sum) == pytest.approx(pairs_loss(recipe, spoken + typed), rel=1e-4)
        recipe.train()
        after = pairs_loss(recipe, spoken)
        assert after < 0.5 * before, (before, after)
        rows = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["loss"] < rows[0]["loss"]
    finally:
        recipe.cleanup()


def test_a_widened_student_is_its_own_teacher_and_typed_text_stays_exactly(config):
    recipe = distill.recipe(dataclasses.replace(config, widen_dims=20, widen_neurons=32, lr=0.03))
    recipe.setup()
    try:
        spoken, typed = list(range(8)), list(range(8, 12))
        before = pairs_loss(recipe, spoken)
        recipe.train()
        assert pairs_loss(recipe, typed) < 1e-6  # trained: on text, still the LLM it started from
        after = pairs_loss(recipe, spoken)
        assert after < 0.8 * before, (before, after)
    finally:
        recipe.cleanup()


def test_the_reply_cross_entropy_adds_to_the_kl_by_its_weight(config):
    """reply_ce_weight: the loss is KL + weight × the student's cross-entropy on the reply's tokens."""
    recipe = distill.recipe(dataclasses.replace(config, reply_ce_weight=0.5))
    recipe.setup()
    try:
        students, teachers = recipe.loader.dataset.students.sequences, recipe.loader.dataset.teachers.sequences
        items = [(PackedSequences(students, [[i]])[0], PackedSequences(teachers, [[i]])[0]) for i in range(4)]
        batch: DistillBatch = collate_pairs(items, recipe.tokenizer.pad_token_id)
        with torch.no_grad():
            both = float(recipe.loss_sum(batch))
            recipe.config.reply_ce_weight = 0.0
            kl = float(recipe.loss_sum(batch))
            logits = recipe.model(input_ids=batch.student.ids, position_ids=batch.student.positions).logits.float()
        targets = batch.student.targets
        ce = float(
            torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100], reduction="sum")
        )
        assert ce > 1.0 and both == pytest.approx(kl + 0.5 * ce, rel=1e-4)
    finally:
        recipe.cleanup()


def test_teacher_replies_are_asked_once_across_a_resume(config, monkeypatch):
    first = distill.recipe(dataclasses.replace(config, max_steps=1))
    first.setup()
    first.train()
    first.cleanup()

    def asks_again(self, prompts):
        raise AssertionError("the kept teacher replies were asked for again")

    monkeypatch.setattr(BaseReplies, "generate", asks_again)
    again = distill.recipe(dataclasses.replace(config, max_steps=2), resume=True)
    again.setup()
    assert again.step == 1
    again.cleanup()


def test_both_orders_are_taught_and_the_words_said_answer_a_request_for_them(config, monkeypatch):
    """Issue 25: an instruction before the clip means what it means after it, so the data holds both orders, the
    teacher reading its text in the student's order; a transcription's reply is the transcript, not asked."""
    config = dataclasses.replace(config, instructions=[TRANSCRIBE_PROMPT, "Answer briefly."], text_ratio=0.0, seed=3)
    asked: list = []
    generate = BaseReplies.generate
    monkeypatch.setattr(BaseReplies, "generate", lambda self, prompts: asked.extend(prompts) or generate(self, prompts))
    recipe = distill.recipe(config)
    recipe.setup()
    try:
        transcripts = {json.loads(line)["text"] for line in open(config.train)}
        decode = recipe.tokenizer.decode
        orders = set()
        for student, teacher in zip(recipe.loader.dataset.students.sequences, recipe.loader.dataset.teachers.sequences,
                                    strict=True):  # fmt: skip
            said, typed = decode(student.ids[~student.learned]), decode(teacher.ids[~teacher.learned])
            instruction = TRANSCRIBE_PROMPT if TRANSCRIBE_PROMPT in said else "Answer briefly."
            text_first = not said.startswith("<|user|> <|sound_start|>")  # (the tiny vocabulary reads words as <unk>)
            transcript = max((t for t in transcripts if t in typed), key=len)  # one clip says another's start
            assert (not typed.startswith(f"<|user|> {transcript}")) == text_first  # the teacher's order too
            orders.add(text_first)
            reply = decode(student.ids[student.learned], skip_special_tokens=True).strip()
            was_asked = any(transcript in m["content"] for p in asked for m in p)
            if instruction == TRANSCRIBE_PROMPT:
                assert reply == transcript and not was_asked
            else:
                assert was_asked
        assert orders == {True, False}
    finally:
        recipe.cleanup()


def test_clips_without_speech_are_answered_by_the_refusal(config):
    """noise_ratio: random codes, silence and white noise come as clips the student answers with the refusal,
    where its teacher reads a note that the recording holds no speech."""
    recipe = distill.recipe(dataclasses.replace(config, noise_ratio=1.0, text_ratio=0.0, refusal="No speech."))
    recipe.setup()
    try:
        students, teachers = recipe.loader.dataset.students.sequences, recipe.loader.dataset.teachers.sequences
        assert len(students) == 8 + 8
        sound = [f"<|sound_{i:04d}|>" for i in range(recipe.speech.config.vocab_size)]
        codes = set(recipe.tokenizer.convert_tokens_to_ids(sound))
        note = recipe.tokenizer(distill.NO_SPEECH_NOTE, add_special_tokens=False).input_ids
        refusal = recipe.tokenizer("No speech.", add_special_tokens=False).input_ids  # (the tiny vocabulary's ids)
        for student, teacher in zip(students[8:], teachers[8:], strict=True):
            assert student.ids[student.learned].tolist()[: len(refusal)] == refusal
            assert codes & set(student.ids.tolist()) and not codes & set(teacher.ids.tolist())
            read = teacher.ids[~teacher.learned].tolist()
            assert any(read[i : i + len(note)] == note for i in range(len(read)))
        assert sorted((recipe.run_dir / "noise").glob("*.flac"))  # silence and white noise are real audio
    finally:
        recipe.cleanup()


def test_refuses_what_it_cannot_distill(config):
    with pytest.raises(ConfigError, match="no training data"):
        distill.recipe(dataclasses.replace(config, train=""))
    recipe = distill.recipe(dataclasses.replace(config, full=True))
    with pytest.raises(ConfigError, match="teacher is the LLM without the adapter"):
        recipe.setup()
    recipe.world.close()


def test_the_command_line_runs_it(tmp_path, config):
    import subprocess

    settings = [f"{key}={value}" for key, value in (("train", config.train), ("tokenizer", config.tokenizer),
                ("llm", config.llm), ("output_dir", tmp_path / "cli"), ("max_steps", 2), ("batch_size", 2),
                ("reply_tokens", 2), ("max_tokens", 400), ("progress", "false"), ("val", config.train))]  # fmt: skip
    result = subprocess.run([*AURALM, "train", "distill", *settings, "--threads", "1"], capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "val_loss" in row] == [2]  # at the end (val_every 100)
    assert 0 < rows[-1]["val_loss"] < 20
