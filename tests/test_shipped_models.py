"""The speech models shipped inside the package: they load by default, are pinned to each other, fit the size
budget, and do what their model card says on test-split speech made again here from the data recipe's seed."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from auralm.apps.demo import QUESTION, SAMPLES
from auralm.apps.shipping import SHIPPED_BUDGET_MB, shipped_megabytes
from auralm.checkpoints import shipped_model
from auralm.checkpoints.registry import SHIPPED_ADAPTER, SHIPPED_DIR, SHIPPED_TOKENIZER
from auralm.data import synthetic_speech as synth
from auralm.data.noise import REFUSAL
from auralm.evaluation import transcript_token_budget
from auralm.lm import SpeechChat
from auralm.lm.loading import SOUND_TOKENS_FILE
from auralm.lm.vocabulary import HASH_KEY
from auralm.quality_report import is_correct
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, corpus_word_error_rate
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT

pytestmark = pytest.mark.integration
CARD = json.loads((SHIPPED_DIR / "metrics.json").read_text())  # what the model card reports


@pytest.fixture(scope="module")
def chat() -> SpeechChat:
    return SpeechChat.from_pretrained(device="cpu")


def test_the_pair_is_pinned_stored_in_float16_and_within_budget(chat):
    recorded = json.loads((shipped_model(SHIPPED_ADAPTER) / SOUND_TOKENS_FILE).read_text())[HASH_KEY]
    default = SpeechTokenizer.from_pretrained("default")  # checks the hash its config records
    assert recorded == default.tokenizer_hash == chat.speech_tokenizer.tokenizer_hash
    assert getattr(chat.model.config, HASH_KEY) == recorded
    weights = [
        w for folder in (SHIPPED_TOKENIZER, SHIPPED_ADAPTER) for w in shipped_model(folder).glob("*.safetensors")
    ]
    assert len(weights) == 2  # the tokenizer's, and the adapter's (LoRA or widened)
    for path in weights:
        with safe_open(path, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"F16", "BOOL", "I64"}
    assert shipped_megabytes() <= SHIPPED_BUDGET_MB


def test_the_default_checkpoint_named_loads_what_nothing_named_loads(chat):
    """checkpoint="default" and None are one rule: the shipped tokenizer, and with no LLM named, the shipped
    adapter on SmolLM2, not its plain weights with sound tokens added untrained."""
    named = SpeechChat.from_pretrained(checkpoint="default", device="cpu")
    assert named.speech_tokenizer.tokenizer_hash == chat.speech_tokenizer.tokenizer_hash
    assert getattr(named.model.config, HASH_KEY) == getattr(chat.model.config, HASH_KEY)
    weights, named_weights = chat.model.state_dict(), named.model.state_dict()
    assert weights.keys() == named_weights.keys()
    assert all(torch.equal(weights[k], named_weights[k]) for k in weights)  # the adapter merged in, both


@pytest.fixture(scope="module")
def report_examples() -> list[synth.PlannedExample]:
    """The test-split clips the card's figures come from (voice families and topics no training saw), planned once
    from the data set's seed as it was."""
    data = CARD["data"]
    plan = synth.plan_examples(data["seed"], examples=data["examples"], recipe=data["recipe"])
    return [example for example in plan if example.split == "test"][: CARD["quality"]["clips"]]


def test_test_split_speech_reads_back_and_is_heard_as_the_card_says(chat, report_examples):
    """The card's tokens → text and LLM transcription WER, and its false refusals, on its own clips, measured as
    `auralm eval` measured them: one clip at a time, greedy, each transcription within Whisper's text budget."""
    examples = report_examples
    clips = [synth.make_clip(e) for e in examples]
    said = [e.item.text for e in examples]
    codes = chat.speech_tokenizer.encode(clips)
    read_back = [chat.speech_tokenizer.decode_text(c, temperatures=(0.0,)) for c in codes]
    heard = [
        chat.transcribe(
            {"type": "audio", "array": clip}, max_new_tokens=transcript_token_budget(len(clip) / SAMPLE_RATE)
        )
        for clip in clips
    ]
    card = CARD["quality"]
    assert corpus_word_error_rate(said, read_back) <= 1.25 * card["tokens_wer"] + 0.05, read_back
    assert corpus_word_error_rate(said, heard) <= 1.1 * card["llm_wer"] + 0.05, heard
    refused = sum(is_correct(REFUSAL, text) for text in heard)
    assert refused <= card["false_refusals"] * len(clips) + 1, heard


def test_a_transcription_request_is_transcribed_in_either_part_order(chat, report_examples):
    """Issue 25: a request before the clip (as the CLI and OpenAI clients send it) means what it means after it: on
    test-split questions no training saw, both orders bring back their words, not their answers."""
    questions = [e for e in report_examples[:12] if e.item.kind == "question"]
    clips = [{"type": "audio", "array": synth.make_clip(e)} for e in questions]
    request = {"type": "text", "text": TRANSCRIBE_PROMPT}
    said = [e.item.text for e in questions]
    for order in ((0, 1), (1, 0)):
        replies = [
            chat.generate([{"role": "user", "content": [(clip, request)[i] for i in order]}], 32) for clip in clips
        ]
        assert corpus_word_error_rate(said, replies) <= 0.6, replies
        assert corpus_word_error_rate([e.item.answer for e in questions], replies) > 0.8, replies


def test_the_main_job_hears_and_answers_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "auralm", "demo"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    said = json.loads((SAMPLES / "texts.json").read_text())[QUESTION.name]
    expected = json.loads((SAMPLES / "answers.json").read_text())[QUESTION.name]
    heard = re.search(r"\(WER ([0-9.]+)\):\n +(.*)\n", result.stdout)
    assert heard and float(heard[1]) == 0, result.stdout  # the tokens read back as what was said
    answered = re.search(rf'done: said "{re.escape(said)}", answered "(.*)"\. Your turn:', result.stdout)
    assert answered and is_correct(expected, answered[1]), result.stdout  # the spoken question, answered right


def test_chat_without_model_flags_uses_the_shipped_models():
    result = subprocess.run(
        [sys.executable, "-m", "auralm", "chat", "--audio", str(QUESTION), "--prompt", "Transcribe the speech.",
         "--max-new-tokens", "32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "untrained" not in result.stderr  # the shipped adapter's sound tokens, not fresh ones
    said = json.loads((SAMPLES / "texts.json").read_text())[QUESTION.name]
    assert corpus_word_error_rate([said], [result.stdout]) <= 0.5, result.stdout  # the request first, transcribed
