"""Recipe: cross-modal distillation: the speech LLM learns to answer a clip as its own base LLM answers the clip's
transcript (Ultravox's `_compute_kl_loss`, DiVA and BLSP do this with continuous audio features; here the input
is discrete sound tokens).

    auralm train distill --config distill tokenizer=runs/tokenizer/tokenizer train=data/speech-v2/train.jsonl
    torchrun --nproc_per_node 4 -m auralm train distill --config distill …   (FSDP2, same global batch)

train= is any transcribed speech `read_examples` reads (a manifest, folder, datasets folder, Parquet, an
export). Each clip gets an instruction drawn from `instructions` (none, "Transcribe the speech.", "Answer
briefly.", …) and becomes two conversations with the same reply:
    teacher  the base LLM (the adapter off) reading the transcript and the instruction;
    student  the LLM with the adapter reading the clip's sound tokens and the instruction;
the reply is the teacher's own greedy answer, asked once and kept in output_dir/teacher_replies.json (the transcript
itself for a `verbatim` request: "Transcribe the speech."). The instruction comes before the clip in
`instruction_first` of the conversations and after it in the rest, so both orders mean the same request. The loss
is KL(teacher ‖ student) over the reply's tokens at `kl_temperature`, plus `reply_ce_weight` × the student's
cross-entropy on the reply itself (without it the KL let a CPU-sized run settle on replies that ignore the clip,
RESULTS.md). So any transcribed speech is instruction data, and a spoken question learns the answer the LLM gives
it typed.

`text_ratio` of the clips also come as text-only conversations (the transcript and instruction typed), where
student and teacher read the same text: the adapter learns to leave text answers as they are, and keeps them
when it is merged into the LLM. `noise_ratio` clips without speech (random codes, silence, white noise; sft's) are
answered `refusal`, the teacher reading a note that the recording holds no speech. What trains, and the outputs:
see llm_recipe.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auralm.data import read_examples
from auralm.data.noise import REFUSAL
from auralm.lm.messages import message_text
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT
from auralm.training.audio_dataset import SkippedExamples
from auralm.training.chat_dataset import Distilled, user_turn
from auralm.training.config import ConfigError
from auralm.training.llm_recipe import LLMRecipe, LLMTrainingConfig
from auralm.training.loop import run_recipe
from auralm.training.noise_clips import noise_clips
from auralm.training.replies import BaseReplies

# What a user asks beside a clip; "" is the clip alone (a spoken question or request is then the whole turn).
INSTRUCTIONS = ["", "", TRANSCRIBE_PROMPT, "Answer briefly.", "What is the speaker asking or saying?",
                "Summarise this in one sentence.", "Repeat exactly what was said.", "Reply to this."]  # fmt: skip
# Requests for the words said: their reply is the transcript (a small teacher rewrites rather than copies), and
# the KL still teaches the teacher's distribution over it.
VERBATIM = [TRANSCRIBE_PROMPT, "Repeat exactly what was said."]
# What the teacher reads in place of a clip without speech.
NO_SPEECH_NOTE = "(The recording holds no speech, only silence or noise.)"


@dataclass
class DistillConfig(LLMTrainingConfig):
    output_dir: str = "runs/distill"
    train: str = ""  # transcribed speech: a manifest, folder, datasets folder, Parquet file or token export
    texts: str | None = None  # a token export's transcripts (for an export DIR: a subset)
    instructions: list[str] = field(default_factory=lambda: list(INSTRUCTIONS))  # drawn uniformly per clip
    verbatim: list[str] = field(default_factory=lambda: list(VERBATIM))  # answered by the transcript itself
    reply_tokens: int = 64  # the longest teacher reply
    reply_batch: int = 16  # teacher prompts answered at once (a GPU takes hundreds)
    text_ratio: float = 0.25  # text-only conversations per spoken one (the adapter keeps text answers)
    noise_ratio: float = 0.05  # clips without speech per spoken one, answered by `refusal`
    refusal: str = REFUSAL
    max_tokens: int = 512


class TeacherReplies:
    """Every transcribed clip as a distilled conversation, and some as typed ones (a `ConversationSource`)."""

    def __init__(self, config: DistillConfig):
        if not config.train:
            raise ConfigError("no training data: set train= (transcribed speech: a manifest, folder, … or export)")
        if not config.instructions:
            raise ConfigError('instructions=[]: give at least one ("" is the clip alone)')
        self.config = config

    def conversations(self, recipe: LLMRecipe) -> tuple[list[Distilled], SkippedExamples]:
        c = self.config
        examples = read_examples(c.train, texts=c.texts)
        codes, skipped = recipe.code_cache.build(examples, recipe.world, num_workers=c.num_workers,
                                                 progress=recipe.progress)  # fmt: skip
        clips = [(example.text, clip) for example, clip in zip(examples, codes, strict=True) if clip is not None]
        rng = np.random.default_rng([c.seed, 3])  # this recipe's own draws: instructions, their order, typed subset
        asked = [c.instructions[i] for i in rng.integers(len(c.instructions), size=len(clips))]
        first = rng.random(len(clips)) < c.instruction_first  # the instruction before the clip, or after it
        typed = sorted(rng.choice(len(clips), size=min(len(clips), round(c.text_ratio * len(clips))), replace=False))
        prompts = [
            [{"role": "user", "content": typed_turn(text, instruction, before)}]
            for (text, _), instruction, before in zip(clips, asked, first, strict=True)
        ]
        ask = [i for i, instruction in enumerate(asked) if instruction not in c.verbatim]
        ask_teacher = BaseReplies(recipe, recipe.run_dir / "teacher_replies.json", c.reply_tokens, c.reply_batch)
        replies = [text for text, _ in clips]  # a request for the words said is answered by the transcript
        for i, reply in zip(ask, ask_teacher([prompts[i] for i in ask], "teacher replies"), strict=True):
            replies[i] = reply

        conversations = []
        for (_, clip), instruction, before, prompt, reply in zip(clips, asked, first, prompts, replies, strict=True):
            answer = {"role": "assistant", "content": reply}
            conversations.append(Distilled([user_turn(clip, instruction, before), answer], [*prompt, answer]))
        conversations += [Distilled(conversations[i].teacher, conversations[i].teacher) for i in typed]
        noise = noise_clips(recipe, round(c.noise_ratio * len(clips)), [i for i in c.instructions if i], c.seed)
        refusal = {"role": "assistant", "content": c.refusal}
        for clip in noise:  # the teacher is told what the clip holds, as it reads the transcript of speech
            typed_noise = typed_turn(NO_SPEECH_NOTE, clip.request, clip.request_first)
            conversations.append(Distilled([user_turn(clip.codes, clip.request, clip.request_first), refusal],
                                           [{"role": "user", "content": typed_noise}, refusal]))  # fmt: skip
        if recipe.progress:
            print(f"distill: {len(clips)} spoken, {len(typed)} typed and {len(noise)} noise conversations", flush=True)
        return conversations, skipped


def typed_turn(transcript: str, instruction: str, instruction_first: bool = False) -> str:
    """The user's turn the teacher reads: the transcript where the clip's sound tokens would be and the
    instruction, in the student's order, joined as SpeechChat joins a clip and a text part."""
    parts = [instruction, transcript] if instruction_first else [transcript, instruction]
    return message_text([part for part in parts if part])


def recipe(config: DistillConfig, resume: bool = False) -> LLMRecipe:
    return LLMRecipe("distill", config, TeacherReplies(config), resume)


def run(config: DistillConfig, resume: bool = False) -> int:
    return run_recipe(recipe(config, resume))


CONFIG = DistillConfig
