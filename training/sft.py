"""Recipe: instruction tuning of a speech LLM on chat conversations with audio (after `pretrain`).

    auralm train sft --config sft tokenizer=runs/tokenizer/tokenizer adapter=runs/pretrain/adapter train=data/chat.jsonl
    torchrun --nproc_per_node 4 -m auralm train sft --config sft …   (FSDP2, same global batch)

train= is a JSONL manifest, one conversation a line, in SpeechChat's message format:

    {"messages": [{"role": "user", "content": [{"type": "audio", "path": "q1.wav"},
                                               {"type": "text", "text": "Answer the question."}]},
                  {"role": "assistant", "content": "Paris."}]}

(audio paths relative to the manifest; a content may also be a plain string; system turns allowed). The loss
covers the assistant's turns only. Spoken instructions and transcription requests are conversations with
audio; a user turn of one clip and one text part is put in either order (the text first in `instruction_first` of
them, drawn per turn), so a request means the same before the clip as after it. The manifest's text-only
conversations keep the LLM's text ability (`text_ratio` of them per spoken one, all by default); with
`text_replies=base` their replies are the LLM's own before training (self-distillation), so they keep its text
answers as they were instead of teaching new ones; with `spoken_replies=base` a reply to a transcribed clip that
says more than its transcript (an answer to a spoken question) is the LLM's own reply to the conversation typed, each
clip as its transcript, so the answer is one it already gives and the clip only has to be heard (cross-modal
self-distillation, as `distill` does with a KL loss). With `heard_first`, a reply to a clip begins with a line
saying what the clip says (`heard_reply`), the transcript the manifest's own transcription request of that clip
gives: the LLM reads the words as text before it answers them (SpeechGPT's chain of modality), and SpeechChat
strips that line. Generated "noise" conversations (`noise_ratio` per spoken one) teach it to say `refusal` when a
clip holds no speech: uniformly random sound codes, or the codes of silence or white noise, alone or with a
request taken from the manifest. Conversations are packed into rows of `max_tokens`.
What trains, and the outputs: see llm_recipe.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from auralm.data.examples import DataError, Example, json_lines
from auralm.data.noise import REFUSAL
from auralm.lm.messages import message_text
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT, heard_reply
from auralm.training.audio_dataset import SkippedExamples
from auralm.training.chat_dataset import Conversation, user_turn
from auralm.training.config import ConfigError
from auralm.training.llm_recipe import LLMRecipe, LLMTrainingConfig
from auralm.training.loop import run_recipe
from auralm.training.noise_clips import noise_clips
from auralm.training.replies import BaseReplies

ROLES = ("system", "user", "assistant")
REPLIES = ("manifest", "base")  # where replies come from: the manifest, or the LLM itself before training


@dataclass
class SFTConfig(LLMTrainingConfig):
    output_dir: str = "runs/sft"
    train: str = ""  # a JSONL manifest of conversations (see the module docstring)
    text_ratio: float | None = None  # text-only conversations per spoken one, drawn from the manifest's; null: all
    text_replies: str = "manifest"  # "base": text-only conversations answered by the LLM itself before training
    spoken_replies: str = "manifest"  # "base": replies to clips answered by the LLM itself, the clips typed
    text_reply_tokens: int = 96  # the longest reply the LLM is asked for (either "base")
    noise_ratio: float = 0.05  # generated noise conversations per spoken one
    refusal: str = REFUSAL  # the assistant's reply to a clip without speech
    heard_first: bool = False  # replies to clips begin with what the clip says (the module docstring)


def read_conversations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The conversations of an SFT manifest, checked: {"id", "messages"} with contents as lists of parts (a
    text string, or {"audio": absolute path}). A line that breaks the format is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such manifest")
    folder = path.absolute().parent
    conversations = []
    for number, row in json_lines(path):
        where = f"{path}:{number}"
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f'{where}: expected {{"messages": [{{"role": …, "content": …}}, …]}}')
        checked = [_message(message, f"{where}: message {i + 1}", folder) for i, message in enumerate(messages)]
        if not any(m["role"] == "assistant" for m in checked):
            raise DataError(f"{where}: no assistant turn, so nothing to learn; add the reply or drop the line")
        if checked[0]["role"] == "assistant":
            raise DataError(f"{where}: the conversation starts with the assistant; it answers a user turn")
        conversations.append({"id": str(row.get("id", where)), "messages": checked})
    if not conversations:
        raise DataError(f"{path}: an empty manifest")
    return conversations


def _message(message: Any, where: str, folder: Path) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise DataError(f'{where}: a message is {{"role": one of {", ".join(ROLES)}, "content": …}}')
    content = message.get("content")
    parts = [content] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise DataError(f"{where}: content must be a string or a list of parts, got {content!r}")
    checked: list[Any] = []
    for part in parts:
        if isinstance(part, str):
            checked.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            checked.append(part["text"])
        elif isinstance(part, dict) and part.get("type") == "audio" and isinstance(part.get("path"), str):
            if message["role"] == "assistant":
                raise DataError(f"{where}: an assistant turn holds audio; audio belongs to user turns")
            checked.append({"audio": str(folder / part["path"])})
        else:
            raise DataError(
                f'{where}: unsupported part {part!r}: use {{"type": "text", "text": …}} or '
                '{"type": "audio", "path": …}'
            )
    return {"role": message["role"], "content": checked}


def _text_prompt(messages: Conversation) -> list[dict[str, str]]:
    """A text-only conversation so far, with string contents."""
    return [{"role": m["role"], "content": message_text(m["content"]) if isinstance(m["content"], list)
             else m["content"]} for m in messages]  # fmt: skip


def _in_order(message: dict[str, Any], text_first: bool) -> dict[str, Any]:
    """A user turn of one clip and one text part with the text first or last; other messages as they are."""
    parts = message["content"]
    if message["role"] != "user" or len(parts) != 2 or sum(isinstance(p, str) for p in parts) != 1:
        return message
    text, clip = sorted(parts, key=lambda p: not isinstance(p, str))
    return user_turn(clip, text, text_first)


def _audio_paths(conversation: dict[str, Any]) -> list[str]:
    return [p["audio"] for m in conversation["messages"] for p in m["content"] if isinstance(p, dict)]


def _clip_and_texts(message: dict[str, Any]) -> tuple[str | None, list[str]]:
    """A user turn's one clip (None if it has none or several) and its text parts."""
    clips = [p["audio"] for p in message["content"] if isinstance(p, dict)]
    return (clips[0] if len(clips) == 1 else None), [p for p in message["content"] if isinstance(p, str)]


def clip_transcripts(manifest: list[dict[str, Any]]) -> dict[str, str]:
    """What each clip the manifest asks to transcribe says: {clip path: the reply to a user turn of it and
    TRANSCRIBE_PROMPT}."""
    transcripts = {}
    for conversation in manifest:
        for asked, reply in pairwise(conversation["messages"]):
            clip, texts = _clip_and_texts(asked)
            if asked["role"] == "user" and reply["role"] == "assistant" and clip and texts == [TRANSCRIBE_PROMPT]:
                transcripts[clip] = message_text(reply["content"])
    return transcripts


def _answers_clip(asked: dict[str, Any], reply: dict[str, Any], transcripts: dict[str, str]) -> bool:
    """Whether `reply` answers a one-clip user turn whose clip is transcribed, with more than the transcript."""
    clip, _ = _clip_and_texts(asked)
    pair = (asked["role"], reply["role"]) == ("user", "assistant")
    return pair and clip in transcripts and message_text(reply["content"]) != transcripts[clip]


def with_heard_lines(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversations of `read_conversations` with each reply to a one-clip user turn led by the line saying
    what the clip says (`heard_reply`), where the manifest asks to transcribe that clip (a user turn of it and
    TRANSCRIBE_PROMPT, answered by its transcript); a reply that is the transcript itself stays as it is."""
    transcripts = clip_transcripts(manifest)
    changed = []
    for conversation in manifest:
        messages = [dict(m) for m in conversation["messages"]]
        for asked, reply in pairwise(messages):
            if _answers_clip(asked, reply, transcripts):
                clip, _ = _clip_and_texts(asked)
                reply["content"] = [heard_reply(transcripts[clip], message_text(reply["content"]))]
        changed.append({**conversation, "messages": messages})
    return changed


def typed(messages: list[dict[str, Any]], transcripts: dict[str, str]) -> list[dict[str, Any]] | None:
    """The messages as if typed: each clip replaced by its transcript (None where a clip has none)."""
    out = []
    for message in messages:
        parts = [transcripts.get(p["audio"]) if isinstance(p, dict) else p for p in message["content"]]
        if None in parts:
            return None
        out.append({"role": message["role"], "content": parts})
    return out


class ChatManifest:
    """The conversations of train=, with noise → refusal conversations added (a `ConversationSource`)."""

    def __init__(self, config: SFTConfig):
        if not config.train:
            raise ConfigError("no training data: set train= (a JSONL manifest of conversations)")
        for key in ("text_replies", "spoken_replies"):
            if getattr(config, key) not in REPLIES:
                raise ConfigError(f"{key}={getattr(config, key)}: use one of {', '.join(REPLIES)}")
        self.config = config

    def conversations(self, recipe: LLMRecipe) -> tuple[list[Conversation], SkippedExamples]:
        c = self.config
        manifest = read_conversations(c.train)
        if c.spoken_replies == "base":
            manifest = self._spoken_base_replies(recipe, manifest)
        if c.heard_first:
            manifest = with_heard_lines(manifest)
        spoken_count = sum(1 for conversation in manifest if _audio_paths(conversation))
        clips = list(dict.fromkeys(path for conversation in manifest for path in _audio_paths(conversation)))
        examples = [Example(id=path, text="", audio=path) for path in clips]
        codes, clip_skipped = recipe.code_cache.build(
            examples, recipe.world, num_workers=c.num_workers, progress=recipe.progress
        )
        by_path = {example.audio: clip for example, clip in zip(examples, codes, strict=True)}

        skipped = SkippedExamples()
        spoken: list[Conversation] = []
        text_only: list[Conversation] = []
        for conversation in manifest:
            paths = _audio_paths(conversation)
            unusable = [p for p in paths if by_path[p] is None]
            if unusable:
                skipped.add([(conversation["id"], f"audio {clip_skipped.reasons.get(unusable[0], 'unusable')}")])
                continue
            messages = [
                {
                    "role": m["role"],
                    "content": [by_path[p["audio"]] if isinstance(p, dict) else p for p in m["content"]],
                }
                for m in conversation["messages"]
            ]
            (spoken if paths else text_only).append(messages)
        order = np.random.default_rng([c.seed, 5])  # this recipe's own draw: the part orders
        spoken = [[_in_order(m, order.random() < c.instruction_first) for m in messages] for messages in spoken]

        if c.text_ratio is not None and len(text_only) > round(c.text_ratio * len(spoken)):
            rng = np.random.default_rng([c.seed, 4])  # this recipe's own draw: the text-only subset
            chosen = rng.choice(len(text_only), size=round(c.text_ratio * len(spoken)), replace=False)
            text_only = [text_only[i] for i in sorted(chosen)]
        if c.text_replies == "base":
            turns = [[i for i, m in enumerate(conversation) if m["role"] == "assistant"] for conversation in text_only]
            text_only = self._base_replies(recipe, text_only, turns, "text_replies.json")
        user_parts = [p for conversation in spoken for m in conversation if m["role"] == "user" for p in m["content"]]
        requests = sorted({p for p in user_parts if isinstance(p, str)})  # what noise clips come with, half the time
        noise = [
            [user_turn(clip.codes, clip.request, clip.request_first), {"role": "assistant", "content": c.refusal}]
            for clip in noise_clips(recipe, round(c.noise_ratio * spoken_count), requests, c.seed)
        ]
        if recipe.progress:
            print(
                f"sft: {len(spoken)} spoken, {len(text_only)} text-only and {len(noise)} noise conversations",
                flush=True,
            )
        return spoken + text_only + noise, skipped

    def _spoken_base_replies(self, recipe: LLMRecipe, manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The manifest with each reply to a transcribed clip that says more than its transcript (a spoken question,
        an instruction) replaced by the LLM's own reply before training to the conversation typed, each clip as its
        transcript (cross-modal self-distillation in sft): a widened LLM, whose text weights cannot learn the
        manifest's answers, then learns only to hear. Kept in output_dir/spoken_replies.json."""
        transcripts = clip_transcripts(manifest)
        chosen, as_typed, turns = [], [], []
        for n, conversation in enumerate(manifest):
            messages = conversation["messages"]
            at = [i for i in range(1, len(messages)) if _answers_clip(messages[i - 1], messages[i], transcripts)]
            if at and (typed_messages := typed(messages, transcripts)) is not None:
                chosen.append(n)
                as_typed.append(typed_messages)
                turns.append(at)
        replied = self._base_replies(recipe, as_typed, turns, "spoken_replies.json")
        manifest = list(manifest)
        for n, conversation, at in zip(chosen, replied, turns, strict=True):
            messages = [dict(m) for m in manifest[n]["messages"]]
            for i in at:
                messages[i]["content"] = [conversation[i]["content"]]
            manifest[n] = {**manifest[n], "messages": messages}
        return manifest

    def _base_replies(
        self, recipe: LLMRecipe, conversations: list[Conversation], turns: list[list[int]], file_name: str
    ) -> list[Conversation]:
        """Conversations of text parts with the assistant turns at `turns` (indices, per conversation) replaced by
        the LLM's own greedy reply before training to the conversation before them (every conversation's first
        such turn, then every second one, …). Kept in output_dir/file_name, so a resumed run asks for none again."""
        ask = BaseReplies(recipe, recipe.run_dir / file_name, self.config.text_reply_tokens)
        conversations = [[dict(m) for m in conversation] for conversation in conversations]
        for k in range(max(map(len, turns), default=0)):
            asked = [
                (conversation, at[k]) for conversation, at in zip(conversations, turns, strict=True) if k < len(at)
            ]
            prompts = [_text_prompt(conversation[:at]) for conversation, at in asked]
            for (conversation, at), reply in zip(asked, ask(prompts), strict=True):
                conversation[at]["content"] = reply
        return conversations


def recipe(config: SFTConfig, resume: bool = False) -> LLMRecipe:
    return LLMRecipe("sft", config, ChatManifest(config), resume)


def run(config: SFTConfig, resume: bool = False) -> int:
    return run_recipe(recipe(config, resume))


CONFIG = SFTConfig
