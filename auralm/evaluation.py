"""How good a speech tokenizer + speech LLM are, measured on held-out clips (`auralm eval`, benchmarks/quality.py).

    clips = read_clips("data/speech-v1/val.jsonl", limit=100)
    report = evaluate(SpeechChat.from_pretrained(...), clips)
    print(format_report(report))             # a markdown table: each metric, its goal, met or not

The clip manifest is the one `auralm.data.synthetic_speech` writes: one JSON object a line with `audio`
(relative to the manifest), `text`, `kind` ("transcript" or "question"), `answer` (questions), and optional
`id`, `language`. What is measured, greedy decoding everywhere so a rerun gives the same report:

    tokens → text WER     the tokenizer's codes read back by its Whisper decoder, against the manifest's text
    Whisper WER           the tokenizer's own Whisper backbone transcribing the same audio (the reference)
    loops                 share of outputs (tokens → text, the LLM's transcription) over twice their reference's words
    LLM WER               `SpeechChat.transcribe` of each clip
    spoken-QA accuracy    question clips sent alone (and with ANSWER_PROMPT), scored by `is_correct`; a "repeat
                          after me" clip (source "repeat") only by the sentence said back, nothing else
    typed-QA accuracy     the same questions typed, answered by the base LLM: what it knows at all, the
                          ceiling for spoken questions (the goal is a share of it)
    heard questions       share of question clips the LLM transcribes word for word, and both accuracies on
                          those alone: a gap there is answering (the modality gap), not listening
    noise → refusal       silence, white noise and random sound codes sent alone; the reply should refuse
    false refusals        speech clips whose transcription or answer is the refusal
    text answers kept     TEXT_QUESTIONS answered by the base LLM and by the speech LLM with its adapter merged
                          (its weights as `auralm merge` writes them, no routing to kept base weights): share
                          left unchanged
    codebook use          share of the K + 1 codes the clips use, and the perplexity of their histogram
    real-time factors     encoding seconds ÷ audio seconds; a whole transcription reply ÷ audio seconds

Word error rates are corpus rates (all errors over all reference words) after Whisper's English normaliser.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from auralm.data.examples import DataError, json_lines
from auralm.data.noise import NOISE_SECONDS, RANDOM_CODES, REFUSAL, SILENCE, WHITE_NOISE, noise_samples
from auralm.data.speech_conversations import ANSWER_PROMPT
from auralm.devices import device_name
from auralm.lm import DEFAULT_LLM, SpeechChat, load_llm
from auralm.lm.chat import Message
from auralm.quality_report import (
    LOOP_LENGTH,
    ClipResult,
    NoiseReply,
    QualityReport,
    TextAnswer,
    is_correct,
)
from auralm.tokenizer import SAMPLE_RATE, corpus_word_error_rate, load_audio, normalize_text, transcribe
from auralm.tokenizer.backbone import MIN_TEXT_TOKENS, TEXT_TOKENS_PER_SECOND
from auralm.tokenizer.bottleneck import codebook_usage

KINDS = ("transcript", "question")
NOISE_NAMES = {RANDOM_CODES: "random codes", SILENCE: "silence", WHITE_NOISE: "white noise"}
ANSWER_TOKENS = 48  # longest reply to a question or a noise clip; a right answer is a few words
# Questions whose answers the speech LLM should give as the base LLM did: facts, arithmetic, definitions and
# instructions, phrased unlike the templates of the synthetic speech (auralm.data.speech_texts).
TEXT_QUESTIONS = (
    "Which planet is closest to the Sun?", "Who wrote the play Romeo and Juliet?",
    "What gas do plants take in from the air?", "How many legs does a spider have?",
    "What is the largest ocean on Earth?", "At what temperature in Celsius does water boil at sea level?",
    "What is 15 multiplied by 4?", "What is the square root of 81?",
    "If I have 3 apples and buy 9 more, how many apples do I have?", "What is half of 250?",
    "Define the word photosynthesis in one sentence.", "What is a noun?", "What does a thermometer measure?",
    "What is the opposite of ancient?", "Name three primary colors.", "Write the word computer backwards.",
    "List the first five prime numbers.", "Give me a synonym for happy.",
    "Translate the word thank you into Spanish.", "Suggest a name for a pet goldfish.",
)  # fmt: skip


@dataclass(frozen=True)
class Clip:
    """One held-out clip. audio: an absolute path; answer: the expected reply to a question, else None."""

    id: str
    audio: str
    text: str
    kind: str
    answer: str | None = None
    language: str | None = None
    source: str | None = None  # the synthetic data's text source; "repeat" is scored by the sentence alone


# ---- reading the clips ------------------------------------------------------------------------------------


def read_clips(manifest: str | os.PathLike, limit: int | None = None) -> list[Clip]:
    """The first `limit` clips (all when None) of a clip manifest, checked: a bad line or a missing audio file
    is a DataError naming it."""
    path = Path(manifest)
    if not path.is_file():
        raise DataError(f"{path}: no such clip manifest")
    folder = path.absolute().parent
    clips = []
    for number, row in json_lines(path):
        if limit is not None and len(clips) == limit:
            break
        where = f"{path}:{number}"
        audio, text, kind, answer = (row.get(key) for key in ("audio", "text", "kind", "answer"))
        if not isinstance(audio, str) or not audio or not isinstance(text, str):
            raise DataError(f"{where}: a clip needs 'audio' (a file path) and 'text' (its transcript)")
        if kind not in KINDS:
            raise DataError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "question" and not isinstance(answer, str):
            raise DataError(f"{where}: a question needs its 'answer' (a string)")
        file = os.path.normpath(folder / audio)
        if not os.path.isfile(file):
            raise DataError(f"{where}: {file}: no such audio file")
        clips.append(Clip(str(row.get("id", audio)), file, text, kind, answer, row.get("language"), row.get("source")))
    if not clips:
        raise DataError(f"{path}: no clips in this manifest")
    return clips


# ---- scoring ----------------------------------------------------------------------------------------------


def looped(output: str, reference: str) -> bool:
    """Whether an output runs past LOOP_LENGTH times its reference's words (normalised): decoding that looped."""
    return len(normalize_text(output).split()) > LOOP_LENGTH * max(1, len(normalize_text(reference).split()))


def transcript_token_budget(seconds: float) -> int:
    """Most LLM tokens a transcription reply may take: Whisper's text budget for a clip of `seconds`."""
    return MIN_TEXT_TOKENS + math.ceil(seconds * TEXT_TOKENS_PER_SECOND)


@torch.no_grad()
def text_reply(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, question: str, max_new_tokens: int = ANSWER_TOKENS
) -> str:
    """The greedy reply of any chat LLM to one text question, prompted as SpeechChat prompts a text turn."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)  # (1, L)
    output = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


def noise_conversations(chat: SpeechChat, count: int, seed: int = 0) -> list[tuple[NoiseReply, list[Message]]]:
    """`count` audio-only user turns without speech, the kinds taking turns (random codes, silence, white noise,
    as the sft recipe makes them), each 1–8 s long. Random codes go in as their token string (the text an audio
    part becomes). Returns (the clip's description with an empty reply, the conversation)."""
    speech = chat.speech_tokenizer
    made = []
    for number in range(count):
        generator = np.random.default_rng([seed, number])
        kind = (RANDOM_CODES, SILENCE, WHITE_NOISE)[number % 3]
        seconds = float(generator.uniform(*NOISE_SECONDS))
        samples = round(seconds * SAMPLE_RATE)
        if kind == RANDOM_CODES:
            codes = generator.integers(0, speech.config.vocab_size, size=speech.num_codes(samples))
            content: Any = speech.to_string(codes.tolist())
        else:
            array = noise_samples(kind, samples, generator).astype(np.float32)
            content = [{"type": "audio", "array": array, "sampling_rate": SAMPLE_RATE}]
        made.append((NoiseReply(NOISE_NAMES[kind], seconds, ""), [{"role": "user", "content": content}]))
    return made


# ---- the evaluation ---------------------------------------------------------------------------------------


def evaluate(
    chat: SpeechChat,
    clips: Sequence[Clip],
    base_llm: str | os.PathLike = DEFAULT_LLM,
    noise_clips: int = 30,
    text_questions: Sequence[str] = TEXT_QUESTIONS,
    refusal: str = REFUSAL,
    seed: int = 0,
    progress: bool = False,
) -> QualityReport:
    """Measure `chat` (its speech tokenizer and LLM) on `clips`; see the module docstring for each metric.

    base_llm: the LLM the speech LLM was made from (default: the packaged SmolLM2-135M-Instruct), for the text
    answers; it is loaded on the chat's device and dropped afterwards. noise_clips: how many clips without
    speech to send; refusal: the reply they should get (the sft recipe's default). seed: draws the noise clips.
    """
    speech = chat.speech_tokenizer
    device = speech.device
    chat.forget()  # a clip encoded earlier would make the LLM's real-time factor look better than it is
    steps = len(clips) * 4 + noise_clips + 2 * len(text_questions) + sum(c.kind == "question" for c in clips)
    stages = tqdm(total=steps, desc="eval", unit="step", disable=not progress, file=sys.stderr)

    audio = [load_audio(clip.audio) for clip in clips]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    encode_seconds, codes = _timed(device, speech.encode, audio, batch_size=16 if device.type == "cuda" else 1)
    stages.update(len(clips))
    tokens_texts = [
        speech.decode_text(c, language=clip.language, temperatures=(0.0,)) for c, clip in _with(stages, codes, clips)
    ]
    whisper_texts = [
        transcribe(speech.whisper, a, language=clip.language, temperatures=(0.0,)).text
        for a, clip in _with(stages, audio, clips)
    ]

    results, reply_seconds = _clip_results(chat, clips, audio, tokens_texts, whisper_texts, stages)

    noise = list(noise_conversations(chat, noise_clips, seed))
    for reply, conversation in _with(stages, noise):
        reply.reply = chat.generate(conversation, ANSWER_TOKENS)

    # the merged weights answer (SpeechChat would route text-only turns to the base weights it keeps)
    speech_answers = [text_reply(chat.model, chat.tokenizer, q) for q in _with(stages, text_questions)]
    questions = [r for r in results if r.kind == "question"]
    base_answers = _base_answers(chat, base_llm, text_questions, questions, stages)
    stages.close()
    answers = [TextAnswer(*a) for a in zip(text_questions, base_answers, speech_answers, strict=True)]

    references = [c.text for c in clips]
    usage = codebook_usage(torch.bincount(torch.cat(codes), minlength=speech.config.vocab_size).float())
    return QualityReport(
        device=device_name(device),
        whisper=speech.config.whisper,
        clips=len(clips),
        questions=len(questions),
        audio_seconds=seconds,
        tokens_wer=corpus_word_error_rate(references, tokens_texts),
        whisper_wer=corpus_word_error_rate(references, whisper_texts),
        llm_wer=corpus_word_error_rate(references, [r.llm_text for r in results]),
        llm_wer_request_first=corpus_word_error_rate(references, [r.llm_text_request_first for r in results]),
        tokens_loops=_share(map(looped, tokens_texts, references)) or 0.0,
        llm_loops=_share(looped(r.llm_text, r.reference) for r in results) or 0.0,
        **_qa_accuracies(questions),
        refusal_rate=_share(is_correct(refusal, n.reply) for n, _ in noise),
        false_refusals=_share(
            any(text is not None and is_correct(refusal, text) for text in (r.llm_text, r.reply)) for r in results
        ),
        text_unchanged=_share(normalize_text(a.base) == normalize_text(a.speech) for a in answers),
        codebook_size=speech.config.vocab_size,
        codes_used=usage["codes_used"],
        code_perplexity=usage["code_perplexity"],
        tokenizer_rtf=encode_seconds / seconds,
        llm_rtf=reply_seconds / seconds,
        clip_results=results,
        noise_replies=[reply for reply, _ in noise],
        text_answers=answers,
        refusal=refusal,
    )


def _clip_results(
    chat: SpeechChat, clips: Sequence[Clip], audio: list[torch.Tensor], tokens_texts: list[str],
    whisper_texts: list[str], stages: tqdm,
) -> tuple[list[ClipResult], float]:  # fmt: skip
    """Each clip transcribed by the speech LLM, requested after the clip and before it (and, for questions, answered
    with and without the prompt), and the seconds the first transcriptions took."""
    results, reply_seconds = [], 0.0
    for clip, clip_audio, tokens_text, whisper_text in zip(clips, audio, tokens_texts, whisper_texts, strict=True):
        clip_seconds = len(clip_audio) / SAMPLE_RATE
        budget = transcript_token_budget(clip_seconds)
        elapsed, llm_text = _timed(chat.speech_tokenizer.device, chat.transcribe, clip.audio, max_new_tokens=budget)
        reply_seconds += elapsed
        request_first = chat.transcribe(clip.audio, max_new_tokens=budget, request_first=True)
        result = ClipResult(clip.id, clip.kind, clip_seconds, clip.text, tokens_text, whisper_text, llm_text,
                            request_first, source=clip.source)  # fmt: skip
        if clip.kind == "question":
            part = {"type": "audio", "path": clip.audio}  # encoded once: the chat keeps the clip's tokens
            result.answer = clip.answer
            result.reply = chat.generate([{"role": "user", "content": [part]}], ANSWER_TOKENS)
            result.reply_with_prompt = chat.generate(
                [{"role": "user", "content": [part, {"type": "text", "text": ANSWER_PROMPT}]}], ANSWER_TOKENS
            )
        results.append(result)
        stages.update(1)
    return results, reply_seconds


def _qa_accuracies(questions: list[ClipResult]) -> dict[str, float | None]:
    """Spoken-QA accuracy (the clip alone, with ANSWER_PROMPT) and the same questions typed to the base LLM; then
    the clip-alone and typed accuracies again on only the questions the LLM heard word for word."""
    heard = [r for r in questions if r.heard()]
    return {
        "qa_accuracy": _share(r.answered(r.reply) for r in questions),
        "qa_accuracy_with_prompt": _share(r.answered(r.reply_with_prompt) for r in questions),
        "typed_qa_accuracy": _share(r.answered(r.typed_reply) for r in questions),
        "questions_heard": _share(r.heard() for r in questions),
        "qa_accuracy_heard": _share(r.answered(r.reply) for r in heard),
        "typed_qa_accuracy_heard": _share(r.answered(r.typed_reply) for r in heard),
    }


def _base_answers(
    chat: SpeechChat, base_llm: str | os.PathLike, text_questions: Sequence[str], questions: list[ClipResult],
    stages: tqdm,
) -> list[str]:  # fmt: skip
    """The base LLM's answers to the text questions, and (into each result's typed_reply) to the spoken questions
    typed. It runs on the chat's device with the chat's attention kernels (the same sums), and is dropped after."""
    if not (text_questions or questions):
        return []
    base_model, base_tokenizer = load_llm(base_llm, device=chat.model.device)
    base_model.set_attn_implementation(chat.model.config._attn_implementation)
    answers = [text_reply(base_model, base_tokenizer, q) for q in _with(stages, text_questions)]
    for r in _with(stages, questions):
        r.typed_reply = text_reply(base_model, base_tokenizer, r.reference)
    return answers


def _timed(device: torch.device, work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, result) of work(*args, **kwargs); on CUDA the queued kernels are waited for."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def _with(bar: tqdm, *columns: Iterable) -> Iterable:
    """zip(*columns) (or the one column's items), moving the progress bar one step per item."""
    for item in zip(*columns, strict=True) if len(columns) > 1 else columns[0]:
        yield item
        bar.update(1)


def _share(outcomes: Iterable[bool]) -> float | None:
    outcomes = list(outcomes)
    return sum(outcomes) / len(outcomes) if outcomes else None
