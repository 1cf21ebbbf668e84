"""The quality report (`auralm.evaluation`, `auralm eval`): each metric against a computation of its own, on tiny
random models and the real clips of tests/data."""

import dataclasses
import json
import math
import os
from collections import Counter

import jiwer
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM
from whisper.normalizers import EnglishTextNormalizer

from auralm.data import DataError
from auralm.data.speech_conversations import ANSWER_PROMPT
from auralm.evaluation import (
    ANSWER_TOKENS,
    TEXT_QUESTIONS,
    evaluate,
    looped,
    noise_conversations,
    read_clips,
    text_reply,
    transcript_token_budget,
)
from auralm.lm import SpeechChat, add_sound_tokens, load_llm
from auralm.quality_report import ClipResult, format_report, is_correct
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, corpus_word_error_rate, load_audio, transcribe
from benchmarks.quality import window_tradeoff
from tests.apps.test_cli import run_main
from tests.conftest import DATA, TEXTS
from tests.lm.conftest import tiny_llama, tiny_text_tokenizer

CLIPS = ["en_16k.wav", "en_8k.wav", "en_slow_22k.flac"]
normalise = EnglishTextNormalizer()


def write_manifest(folder, rows) -> str:
    path = folder / "clips.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def clip_row(name: str, **fields) -> dict:
    """A manifest row for a tests/data clip, its audio path relative to the manifest's folder (tmp_path)."""
    return {"id": name, "audio": os.path.relpath(DATA / name, fields.pop("folder")), "text": TEXTS[name]} | fields


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine lose much: decoding is many small steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def llm_folder(tmp_path):
    """A tiny random Llama without sound tokens, saved: the base LLM of `chat`."""
    folder = tmp_path / "llm"
    tiny_llama(tied=True, initializer_range=1.0).save_pretrained(folder)
    tiny_text_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def chat(tiny_tokenizer):
    """The base LLM with sound tokens added: replies that depend on the prompt. The KV cache is not reused, so
    a reply computed again in a test is bit for bit the one the evaluation saw."""
    model, text = tiny_llama(tied=True, initializer_range=1.0), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    return SpeechChat(model, text, tiny_tokenizer, reuse_cache=False)


def test_an_answer_counts_when_its_words_are_in_the_reply():
    assert is_correct("12.", "The answer is 12.")
    assert is_correct("Twelve.", "12")  # Whisper's normaliser writes numbers as digits
    assert is_correct("Woof.", "woof")
    assert is_correct("I couldn't hear any speech in that.", "I could not hear any speech in that")
    assert not is_correct("12.", "112")  # whole words only
    assert not is_correct("Paris.", "London.")
    assert not is_correct("red and blue", "blue and red")  # in order
    assert not is_correct("Woof.", "")


def test_corpus_word_error_rate_counts_all_words_not_the_mean_of_clips():
    references, hypotheses = ["The cat sat down.", "Hello."], ["the cat sat down", "yellow"]
    assert corpus_word_error_rate(references, hypotheses) == pytest.approx(1 / 5)  # the mean of clips would be 1/2
    assert corpus_word_error_rate(["Twelve colours."], ["12 colors"]) == 0.0


def test_read_clips_checks_each_line(tmp_path):
    rows = [clip_row(name, folder=tmp_path, kind="transcript") for name in CLIPS]
    clips = read_clips(write_manifest(tmp_path, rows), limit=2)
    assert [c.id for c in clips] == CLIPS[:2] and clips[0].audio == str(DATA / CLIPS[0])
    with pytest.raises(DataError, match=f"{tmp_path / 'missing.jsonl'}: no such clip manifest"):
        read_clips(tmp_path / "missing.jsonl")
    bad = {
        "needs its 'answer'": clip_row(CLIPS[0], folder=tmp_path, kind="question"),
        "'kind' must be one of transcript, question": clip_row(CLIPS[0], folder=tmp_path, kind="chat"),
        "gone.wav: no such audio file": {"audio": "gone.wav", "text": "x", "kind": "transcript"},
    }
    for says, row in bad.items():
        with pytest.raises(DataError, match=f"clips.jsonl:1: .*{says}"):
            read_clips(write_manifest(tmp_path, [row]))


def test_noise_clips_take_turns_and_hold_no_speech(chat):
    made = noise_conversations(chat, 6, seed=3)
    assert [n.kind for n, _ in made] == ["random codes", "silence", "white noise"] * 2
    assert all(1 <= n.seconds <= 8 for n, _ in made)
    codes = chat.speech_tokenizer.from_string(made[0][1][0]["content"])  # random codes: their token string
    assert len(codes) == chat.speech_tokenizer.num_codes(round(made[0][0].seconds * SAMPLE_RATE))
    silence, noise = (m[0]["content"][0]["array"] for _, m in made[1:3])
    assert not silence.any() and 1e-3 <= np.sqrt(np.mean(noise**2)) <= 1e-1  # −60 … −20 dBFS
    assert next(m for _, m in noise_conversations(chat, 6, seed=3)) == made[0][1]  # the seed decides


def test_text_reply_is_what_the_chat_answers_to_a_text_turn(chat):
    for question in (*TEXT_QUESTIONS[:3], "what is this sound ?"):
        expected = chat.generate([{"role": "user", "content": question}], ANSWER_TOKENS)
        assert text_reply(chat.model, chat.tokenizer, question) == expected


def test_every_metric_matches_its_own_computation(tmp_path, chat, tiny_tokenizer, llm_folder):
    audio_only = [{"role": "user", "content": [{"type": "audio", "path": str(DATA / "en_8k.wav")}]}]
    right = chat.generate(audio_only, ANSWER_TOKENS)  # the tiny model's reply becomes the expected answer
    rows = [
        clip_row("en_16k.wav", folder=tmp_path, kind="transcript"),
        clip_row("en_8k.wav", folder=tmp_path, kind="question", answer=right),
        clip_row("en_slow_22k.flac", folder=tmp_path, kind="question", answer="zebra"),  # not in its vocabulary
    ]
    clips = read_clips(write_manifest(tmp_path, rows))
    noise = [chat.generate(m, ANSWER_TOKENS) for _, m in noise_conversations(chat, 4)]
    report = evaluate(chat, clips, base_llm=llm_folder, noise_clips=4, refusal=noise[1])

    audio = [load_audio(DATA / name) for name in CLIPS]
    references = [normalise(TEXTS[name]) for name in CLIPS]
    codes = tiny_tokenizer.encode(audio)
    tokens_texts = [tiny_tokenizer.decode_text(c, temperatures=(0.0,)) for c in codes]
    assert report.tokens_wer == pytest.approx(jiwer.wer(references, [normalise(t) for t in tokens_texts]))
    whisper_texts = [transcribe(tiny_tokenizer.whisper, a, temperatures=(0.0,)).text for a in audio]
    assert report.whisper_wer == pytest.approx(jiwer.wer(references, [normalise(t) for t in whisper_texts]))
    seconds = [len(a) / SAMPLE_RATE for a in audio]
    llm_texts = [
        chat.transcribe(str(DATA / n), max_new_tokens=transcript_token_budget(s))
        for n, s in zip(CLIPS, seconds, strict=True)
    ]
    assert report.llm_wer == pytest.approx(jiwer.wer(references, [normalise(t) for t in llm_texts]))
    assert [r.llm_text for r in report.clip_results] == llm_texts
    requested_first = [
        chat.transcribe(str(DATA / n), max_new_tokens=transcript_token_budget(s), request_first=True)
        for n, s in zip(CLIPS, seconds, strict=True)
    ]
    assert report.llm_wer_request_first == pytest.approx(jiwer.wer(references, [normalise(t) for t in requested_first]))
    assert [r.llm_text_request_first for r in report.clip_results] == requested_first

    assert report.qa_accuracy == 0.5  # the first question's answer is its reply; "zebra" is never said
    prompted = [
        [{"role": "user", "content": [{"type": "audio", "path": str(DATA / n)}, ANSWER_PROMPT]}] for n in CLIPS[1:]
    ]
    with_prompt = [chat.generate(m, ANSWER_TOKENS) for m in prompted]
    assert [r.reply_with_prompt for r in report.clip_results[1:]] == with_prompt
    assert report.qa_accuracy_with_prompt == sum(map(is_correct, [right, "zebra"], with_prompt)) / 2
    typed = [text_reply(*load_llm(llm_folder), TEXTS[n]) for n in CLIPS[1:]]  # the questions typed, base LLM
    assert [r.typed_reply for r in report.clip_results] == [None, *typed]
    assert report.typed_qa_accuracy == sum(map(is_correct, [right, "zebra"], typed)) / 2
    heard = [normalise(t) == normalise(TEXTS[n]) for t, n in zip(llm_texts[1:], CLIPS[1:], strict=True)]
    assert report.questions_heard == sum(heard) / 2
    spoken_right, typed_right = [True, False], [is_correct(a, t) for a, t in zip([right, "zebra"], typed, strict=True)]
    on_heard = [(s, t) for h, s, t in zip(heard, spoken_right, typed_right, strict=True) if h]
    if on_heard:
        assert report.qa_accuracy_heard == sum(s for s, _ in on_heard) / len(on_heard)
        assert report.typed_qa_accuracy_heard == sum(t for _, t in on_heard) / len(on_heard)
    else:  # the tiny random LLM hears nothing word for word
        assert report.qa_accuracy_heard is None and report.typed_qa_accuracy_heard is None
    assert [n.reply for n in report.noise_replies] == noise
    assert report.refusal_rate == sum(is_correct(noise[1], n) for n in noise) / 4 >= 1 / 4
    assert report.text_unchanged == 1.0  # no adapter: sound tokens leave the text rows as they were
    assert (
        report.tokens_loops == sum(looped(t, r) for t, r in zip(tokens_texts, map(TEXTS.get, CLIPS), strict=True)) / 3
    )
    assert report.llm_loops == sum(looped(t, r) for t, r in zip(llm_texts, map(TEXTS.get, CLIPS), strict=True)) / 3
    refused = [is_correct(noise[1], t) or is_correct(noise[1], r or "") for t, r in
               zip(llm_texts, [None, right, report.clip_results[2].reply], strict=True)]  # fmt: skip
    assert report.false_refusals == sum(refused) / 3

    counts = Counter(torch.cat(codes).tolist())
    p = np.array(list(counts.values())) / sum(counts.values())
    assert report.codebook_size == tiny_tokenizer.config.n_codes + 1
    assert report.codes_used == pytest.approx(len(counts) / report.codebook_size)
    assert report.code_perplexity == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert report.audio_seconds == pytest.approx(sum(seconds))
    assert report.tokenizer_rtf > 0 and report.llm_rtf > 0 and report.device.startswith("CPU ")
    assert json.loads(json.dumps(report.to_dict()))["clip_results"][1]["answer"] == right

    table = format_report(report, verbose=True)
    qa_limit = f"{80 * report.typed_qa_accuracy:.1f} %"
    met = "yes" if 0.5 >= 0.8 * report.typed_qa_accuracy else "no"
    assert f"| spoken-QA accuracy | 50.0 % | ≥ 0.8 × typed, base LLM ({qa_limit}) | {met} |" in table
    assert f"| the same questions typed, base LLM (ceiling) | {100 * report.typed_qa_accuracy:.1f} % |" in table
    heard_row = f"| questions the LLM transcribes word for word | {100 * report.questions_heard:.1f} % |"
    assert heard_row in table
    assert "wrong answer  en_slow_22k.flac" in table and "wrong answer  en_8k.wav" not in table


def test_text_answers_changed_by_another_base_are_counted(tmp_path, chat):
    other = tmp_path / "other"
    tiny_llama(tied=False).save_pretrained(other)  # other weights: mostly other answers
    tiny_text_tokenizer().save_pretrained(other)
    questions = (*TEXT_QUESTIONS[:4], "what is this sound ?", "hello")
    clips = read_clips(write_manifest(tmp_path, [clip_row("en_8k.wav", folder=tmp_path, kind="transcript")]))
    report = evaluate(chat, clips, base_llm=other, noise_clips=0, text_questions=questions)

    base = [text_reply(tiny_llama(tied=False), tiny_text_tokenizer(), q) for q in questions]  # no sound tokens
    answers = [base, [chat.generate([{"role": "user", "content": q}], ANSWER_TOKENS) for q in questions]]
    assert [(a.base, a.speech) for a in report.text_answers] == list(zip(*answers, strict=True))
    same = [normalise(b) == normalise(s) for b, s in zip(*answers, strict=True)]
    assert report.text_unchanged == sum(same) / len(questions) < 1
    assert report.refusal_rate is None and report.qa_accuracy is None
    assert "| noise → refusal | — | ≥ 90 % | — |" in format_report(report)


def test_repeat_after_me_counts_the_sentence_said_back_not_an_echo_of_the_request():
    clip = ClipResult("r", "question", 2.0, "Repeat after me: the cat sat.", "", "", "", "", answer="The cat sat.",
                      source="repeat")  # fmt: skip
    assert clip.answered("The cat sat.") and clip.answered("the cat sat")
    assert not clip.answered("Repeat after me: the cat sat.")  # the request echoed
    assert not clip.answered("Sure! The cat sat.")
    fact = dataclasses.replace(clip, source="facts", answer="Paris.")
    assert fact.answered("It is Paris.")  # other questions: the answer's words in the reply


def test_a_question_is_heard_when_transcribed_word_for_word_which_splits_listening_from_answering():
    def question(said: str, transcribed: str, reply: str, typed: str) -> ClipResult:
        return ClipResult(said, "question", 1.0, said, "", "", transcribed, "", answer="3.", reply=reply,
                          typed_reply=typed)  # fmt: skip

    heard_wrong = question("What is 2 plus 1?", "what is two plus one", "12.", "It is 3.")  # normalised alike
    heard_right = question("How much is 1 plus 2?", "How much is 1 plus 2?", "3.", "3")
    misheard = question("What is 3 plus 0?", "What is 3 plus 10?", "13.", "3.")
    assert [r.heard() for r in (heard_wrong, heard_right, misheard)] == [True, True, False]
    # the modality gap: both heard, both answered typed, one answered spoken
    assert [(r.answered(r.reply), r.answered(r.typed_reply)) for r in (heard_wrong, heard_right)] == [
        (False, True), (True, True)
    ]  # fmt: skip


def test_an_output_loops_past_twice_its_reference():
    assert looped("a b c d e f g", "the cat sat") and not looped("a b c d e f", "the cat sat")
    assert looped("a b c", "") and not looped("a b", "")


def test_text_answers_are_those_of_the_merged_adapter_not_of_kept_base_weights(tmp_path, tiny_tokenizer, llm_folder):
    """An adapter that changes text answers: SpeechChat answers text on the base weights it keeps, so only the
    merged weights, which `auralm merge` serves, show the change."""
    adapter = tmp_path / "adapter"
    base = LlamaForCausalLM.from_pretrained(llm_folder)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                      init_lora_weights=False)  # fmt: skip
    get_peft_model(base, lora).save_pretrained(adapter)
    model, text = load_llm(llm_folder, adapter=adapter, keep_base=True)
    add_sound_tokens(model, text, tiny_tokenizer)
    chat = SpeechChat(model, text, tiny_tokenizer, reuse_cache=False)
    questions = TEXT_QUESTIONS[:6]
    routed = [chat.generate([{"role": "user", "content": q}], ANSWER_TOKENS) for q in questions]
    base_answers = [text_reply(*load_llm(llm_folder), q) for q in questions]
    assert routed == base_answers  # in-process routing hides the change…
    clips = read_clips(write_manifest(tmp_path, [clip_row("en_8k.wav", folder=tmp_path, kind="transcript")]))
    report = evaluate(chat, clips, base_llm=llm_folder, noise_clips=0, text_questions=questions)
    merged = [text_reply(model, text, q) for q in questions]
    assert [a.speech for a in report.text_answers] == merged
    assert (
        report.text_unchanged
        == sum(normalise(b) == normalise(m) for b, m in zip(base_answers, merged, strict=True)) / 6
        < 1
    )


def test_eval_command_prints_the_table_and_writes_json(tmp_path, capsys, tiny_tokenizer, tiny_whisper_file, llm_folder):
    tiny_tokenizer.save_pretrained(tmp_path / "speech")  # its Whisper is random: named by --whisper
    rows = [
        clip_row("en_16k.wav", folder=tmp_path, kind="transcript"),
        clip_row("en_8k.wav", folder=tmp_path, kind="question", answer="Yes."),
    ]
    manifest = write_manifest(tmp_path, rows)
    code, out, err = run_main(
        capsys, "eval", manifest, "--checkpoint", str(tmp_path / "speech"), "--whisper", str(tiny_whisper_file),
        "--llm", str(llm_folder), "--base-llm", str(llm_folder), "--noise-clips", "3", "--json",
        str(tmp_path / "out" / "report.json"),
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("| metric | value | goal | met |")
    assert "| text answers unchanged, adapter merged | 100.0 % | ≥ 90 % | yes |" in out
    assert "goals met" in out.splitlines()[-1] and "2 clips (1 question, " in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["clips"] == 2 and len(report["noise_replies"]) == 3 and len(report["text_answers"]) == 20


def test_eval_command_names_a_missing_manifest(tmp_path, capsys):
    code, out, err = run_main(capsys, "eval", str(tmp_path / "nope.jsonl"), "--checkpoint", "tok")
    assert code == 2 and out == ""
    assert err.strip() == f"auralm eval: error: {tmp_path / 'nope.jsonl'}: no such clip manifest"


def test_quality_benchmark_times_both_windows(tmp_path, tiny_tokenizer):
    audio = [load_audio(DATA / name) for name in CLIPS[:2]]
    references = [TEXTS[name] for name in CLIPS[:2]]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    rows = window_tradeoff(tiny_tokenizer, audio, references, 0.5, None, repeats=1)  # the tiny one's window is 30 s
    assert [(r.window_seconds, r.weights, r.tokens_wer) for r in rows] == [
        (10, "random", None),
        (30, "trained (evaluated above)", 0.5),
    ]
    assert all(r.encode_seconds > 0 and r.rtf == pytest.approx(r.encode_seconds / seconds) for r in rows)

    short = SpeechTokenizer(dataclasses.replace(tiny_tokenizer.config, window_seconds=10), tiny_tokenizer.whisper)
    tiny_tokenizer.save_pretrained(tmp_path / "30s")
    rows = window_tradeoff(short, audio, references, 0.5, str(tmp_path / "30s"), repeats=1)
    texts = [tiny_tokenizer.decode_text(c, temperatures=(0.0,)) for c in tiny_tokenizer.encode(audio)]
    assert rows[1].weights == f"trained ({tmp_path / '30s'})"
    assert rows[1].tokens_wer == pytest.approx(
        jiwer.wer([normalise(r) for r in references], [normalise(t) for t in texts])
    )
