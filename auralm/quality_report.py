"""The quality report's record and its table: what `auralm.evaluation.evaluate` measured on each clip, issue 24's
goals, and how an answer is scored (`is_correct`). Kept apart from the measuring so the report can be read,
compared and printed without loading a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from auralm.data.noise import REFUSAL
from auralm.data.speech_conversations import ANSWER_PROMPT
from auralm.tokenizer import normalize_text

# ---- goals (issue 24) -----------------------------------------------------------------------------------
TOKENS_WER_RATIO = 1.5  # tokens → text WER at most this many times Whisper's on the same clips
LOOP_LENGTH = 2  # an output over this many times its reference's words has looped
LLM_WER_RATIO = 1.25  # the LLM's own transcription WER at most this many times the tokens → text WER
QA_RATIO = 0.8  # spoken-QA accuracy at least this share of the same questions typed to the base LLM
TEXT_KEPT_GOAL = 0.9
REFUSAL_GOAL = 0.9
FALSE_REFUSAL_GOAL = 0.02


@dataclass
class ClipResult:
    """What each path made of one clip; replies are None for transcript clips."""

    id: str
    kind: str
    seconds: float
    reference: str
    tokens_text: str  # the tokenizer's Whisper decoder reading the codes
    whisper_text: str  # the plain Whisper backbone on the audio
    llm_text: str  # SpeechChat.transcribe
    llm_text_request_first: str  # the same with the request before the clip (the CLI's and OpenAI clients' order)
    answer: str | None = None
    reply: str | None = None  # to the clip alone
    reply_with_prompt: str | None = None  # to the clip + ANSWER_PROMPT
    typed_reply: str | None = None  # the base LLM's reply to the question typed
    source: str | None = None

    def answered(self, reply: str | None) -> bool:
        """Whether `reply` answers this question clip: "repeat after me" by the sentence said back and nothing
        more (echoing the request is no answer), the rest by `is_correct`."""
        if reply is None or self.answer is None:
            return False
        if self.source == "repeat":
            return normalize_text(reply) == normalize_text(self.answer)
        return is_correct(self.answer, reply)

    def heard(self) -> bool:
        """Whether the LLM's own transcription is word for word this clip's reference (normalised): for a question,
        an answer can then go wrong only by answering, not by listening."""
        return normalize_text(self.llm_text) == normalize_text(self.reference)


@dataclass
class NoiseReply:
    kind: str  # one of auralm.evaluation.NOISE_NAMES' values
    seconds: float
    reply: str


@dataclass
class TextAnswer:
    question: str
    base: str  # the base LLM's reply
    speech: str  # the speech LLM's reply, its adapter merged


@dataclass
class Goal:
    metric: str
    value: str
    target: str
    met: bool | None  # None: not measured


@dataclass
class QualityReport:
    """Everything `evaluate` measured. Rates are fractions (0.25 = 25 %); None where nothing was measured
    (no question clips, no noise clips, no text questions)."""

    device: str
    whisper: str  # the tokenizer's backbone, the reference transcriber
    clips: int
    questions: int
    audio_seconds: float
    tokens_wer: float
    whisper_wer: float
    llm_wer: float
    llm_wer_request_first: float  # transcription requested before the clip: both orders should mean the same
    tokens_loops: float  # share of tokens → text outputs over LOOP_LENGTH × their reference's words
    llm_loops: float  # the same, of the LLM's transcriptions
    qa_accuracy: float | None
    qa_accuracy_with_prompt: float | None
    typed_qa_accuracy: float | None  # the base LLM on the questions typed
    # listening apart from answering: the questions the LLM transcribes word for word, and the two accuracies there
    questions_heard: float | None
    qa_accuracy_heard: float | None
    typed_qa_accuracy_heard: float | None
    refusal_rate: float | None
    false_refusals: float | None  # speech clips refused
    text_unchanged: float | None
    codebook_size: int  # K + 1: the codes a tokenizer can emit, the mask code included
    codes_used: float
    code_perplexity: float
    tokenizer_rtf: float  # SpeechTokenizer.encode seconds ÷ audio seconds
    llm_rtf: float  # SpeechChat.transcribe seconds (encoding, prefill and decoding) ÷ audio seconds
    refusal: str = REFUSAL  # the reply noise clips should get
    clip_results: list[ClipResult] = field(default_factory=list)
    noise_replies: list[NoiseReply] = field(default_factory=list)
    text_answers: list[TextAnswer] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def goals(self) -> list[Goal]:
        """Issue 24's goals, each with the value measured and whether it is met."""
        tokens_limit, llm_limit = TOKENS_WER_RATIO * self.whisper_wer, LLM_WER_RATIO * self.tokens_wer
        qa_limit = None if self.typed_qa_accuracy is None else QA_RATIO * self.typed_qa_accuracy
        return [
            Goal("tokens → text WER", _percent(self.tokens_wer),
                 f"≤ {TOKENS_WER_RATIO:g} × Whisper {self.whisper} ({_percent(tokens_limit)})",
                 self.tokens_wer <= tokens_limit),
            Goal(f"tokens → text outputs over {LOOP_LENGTH} × their reference", _percent(self.tokens_loops), "none",
                 self.tokens_loops == 0),
            Goal("LLM transcription WER", _percent(self.llm_wer),
                 f"≤ {LLM_WER_RATIO:g} × tokens → text ({_percent(llm_limit)})", self.llm_wer <= llm_limit),
            Goal("spoken-QA accuracy", _percent(self.qa_accuracy),
                 f"≥ {QA_RATIO:g} × typed, base LLM ({_percent(qa_limit)})",
                 None if self.qa_accuracy is None or qa_limit is None else self.qa_accuracy >= qa_limit),
            _share_goal("text answers unchanged, adapter merged", self.text_unchanged, TEXT_KEPT_GOAL),
            _share_goal("noise → refusal", self.refusal_rate, REFUSAL_GOAL),
            Goal("false refusals of speech", _percent(self.false_refusals), f"≤ {100 * FALSE_REFUSAL_GOAL:g} %",
                 None if self.false_refusals is None else self.false_refusals <= FALSE_REFUSAL_GOAL),
        ]  # fmt: skip

    def summary(self) -> str:
        """One line: the goals met, on what, on which device."""
        goals = self.goals()
        met = [g.metric for g in goals if g.met]
        measured = sum(g.met is not None for g in goals)
        return (
            f"{len(met)} of {measured} goals met{' (' + ', '.join(met) + ')' if met else ''}; {self.clips} clips "
            f"({self.questions} question{'s' * (self.questions != 1)}, {self.audio_seconds:.0f} s of audio) "
            f"on {self.device}"
        )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _share_goal(metric: str, value: float | None, goal: float) -> Goal:
    return Goal(metric, _percent(value), f"≥ {100 * goal:.0f} %", None if value is None else value >= goal)


# ---- scoring ---------------------------------------------------------------------------------------------


def is_correct(expected: str, reply: str) -> bool:
    """Whether a reply gives the expected answer: after Whisper's English normaliser (case, punctuation,
    "twelve" → "12"), the expected words equal the reply's or occur in it as a contiguous run of whole words
    ("12." is in "It is 12.", not in "112"). Used for spoken answers and for refusals alike."""
    want, got = normalize_text(expected).split(), normalize_text(reply).split()
    if not want:
        return not got
    return any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))


# ---- the report -------------------------------------------------------------------------------------------


def format_report(report: QualityReport, verbose: bool = False) -> str:
    """The report as a markdown table (metric, value, goal, met), then its one-line summary. verbose adds the
    questions answered wrongly, the noise not refused and the text answers that changed."""
    marks = {True: "yes", False: "no", None: "—"}
    heard_accuracies = f"{_percent(report.qa_accuracy_heard)} ({_percent(report.typed_qa_accuracy_heard)})"
    rows = [(g.metric, g.value, g.target, marks[g.met]) for g in report.goals()]
    rows += [
        (f"Whisper {report.whisper} WER (reference)", _percent(report.whisper_wer), "", ""),
        ("LLM transcription WER, requested before the clip", _percent(report.llm_wer_request_first), "", ""),
        (f"LLM transcriptions over {LOOP_LENGTH} × their reference", _percent(report.llm_loops), "", ""),
        (f'spoken-QA accuracy, with "{ANSWER_PROMPT}"', _percent(report.qa_accuracy_with_prompt), "", ""),
        ("the same questions typed, base LLM (ceiling)", _percent(report.typed_qa_accuracy), "", ""),
        ("questions the LLM transcribes word for word", _percent(report.questions_heard), "", ""),
        ("spoken-QA accuracy on those (typed, base LLM)", heard_accuracies, "", ""),
        (f"codebook use (of {report.codebook_size} codes)", _percent(report.codes_used), "", ""),
        ("codebook perplexity", f"{report.code_perplexity:.1f}", "", ""),
        ("tokenizer real-time factor", f"{report.tokenizer_rtf:.3f}", "", ""),
        ("LLM transcription real-time factor", f"{report.llm_rtf:.3f}", "", ""),
    ]
    lines = ["| metric | value | goal | met |", "|---|---:|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", report.summary()]
    if verbose:
        lines += [""]
        for r in report.clip_results:
            if r.answer is not None and not r.answered(r.reply):
                lines.append(f"wrong answer  {r.id}: {r.reference!r} → {r.reply!r} (expected {r.answer!r})")
        for n in report.noise_replies:
            if not is_correct(report.refusal, n.reply):
                lines.append(f"not refused   {n.kind}, {n.seconds:.1f} s → {n.reply!r}")
        for a in report.text_answers:
            if normalize_text(a.base) != normalize_text(a.speech):
                lines.append(f"changed       {a.question!r}: {a.base!r} → {a.speech!r}")
    return "\n".join(lines)
