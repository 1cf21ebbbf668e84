"""The LLM recipes' data: sound codes cached per clip, conversations as token ids with a loss mask, packing.

    cache = CodeCache(run_dir / "codes", speech_tokenizer)
    codes, skipped = cache.build(examples, world)                     # (T,) int codes per example, None if unusable
    tokens = chat_tokens(tokenizer, [user_turn(codes[0], TRANSCRIBE_PROMPT), {"role": "assistant", "content": text}])
    packs = best_fit_decreasing([len(t.ids) for t in sequences], capacity=1024)
    loader = DataLoader(PackedSequences(sequences, packs), batch_sampler=…, collate_fn=collate_packs)

A conversation here is SpeechChat's message format with every audio part already replaced by its codes
(a content part that is an int array), rendered exactly as SpeechChat renders a message at inference:
parts joined into the message text (a sound-token string for the codes), then the LLM's chat template.

Packing puts several conversations into one row of at most `max_tokens`; each restarts its position ids
at 0 and transformers (≥ 4.53) then confines attention to it (a block-diagonal causal mask built from
the position ids, for eager, SDPA and flash attention alike). Padding is one more such block, with no
targets, so a padded row computes its conversations exactly as alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from auralm.data import DataError, Example
from auralm.distributed import World
from auralm.lm.messages import message_text
from auralm.tokenizer import SpeechTokenizer, codes_to_string
from auralm.training.audio_dataset import AudioTextDataset, SkippedExamples
from auralm.training.features import FeatureCache
from auralm.training.packing import best_fit_decreasing

IGNORE = -100  # a target without a loss: prompts, the other turns, padding
TOO_LONG = "too long"  # a conversation of more tokens than max_tokens

Conversation = list[dict[str, Any]]  # messages; content: a string, or parts (str text | (T,) int codes)


class Distilled(NamedTuple):
    """What the student reads (e.g. a clip's sound tokens) and what its teacher reads (e.g. the clip's transcript),
    with the same assistant replies: the student learns the teacher's distribution over those replies."""

    student: Conversation
    teacher: Conversation


class CodeCache:
    """Sound codes of clips, encoded once by the speech tokenizer and kept on disk, one .npy per clip named by
    the tokenizer's hash and the clip, so epochs, resumed runs and runs on the same data do not encode again.
    Examples of a token export come with their codes and are only checked. With `frames`, the encoder frames a
    tokenizer run cached (training/features.py), clips found there are quantized from them: no encoder pass."""

    def __init__(
        self, directory: str | os.PathLike, speech_tokenizer: SpeechTokenizer, frames: FeatureCache | None = None
    ):
        self.directory, self.speech_tokenizer, self.frames = Path(directory), speech_tokenizer, frames
        self.tokenizer_hash = speech_tokenizer.tokenizer_hash

    def key(self, example: Example) -> str:
        """The tokenizer and the clip: a file by its absolute path alone, so recipes that name it from different
        manifests (pretrain, then sft) share its codes; a dataset row by its example's id too."""
        if isinstance(example.audio, str):
            clip = [str(Path(example.audio).absolute())]
        else:
            clip = [example.id, repr(example.audio)]
        return hashlib.sha1(json.dumps([self.tokenizer_hash, *clip]).encode()).hexdigest()

    def build(
        self,
        examples: Sequence[Example],
        world: World,
        batch_size: int = 8,
        num_workers: int = 0,
        progress: bool = True,
    ) -> tuple[list[np.ndarray | None], SkippedExamples]:
        """Encode the clips not cached yet (each rank its share, decoded in DataLoader workers), then the
        codes (T,) int64 of every example in order, None for those that could not be used."""
        keys = [None if e.codes is not None else self.key(e) for e in examples]
        self.directory.mkdir(parents=True, exist_ok=True)
        todo = [
            i for i in range(world.rank, len(examples), world.size) if keys[i] and not self._known(keys[i])
        ]  # fmt: skip
        if self.frames is not None:
            todo = self._quantize_cached_frames(examples, keys, todo, progress)
        dataset = AudioTextDataset([examples[i] for i in todo], window_seconds=None)  # any length: encode splits it
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        with tqdm(total=len(todo), desc="sound codes", unit="clip", disable=not progress or not todo) as bar:
            for first, samples in zip(range(0, len(todo), batch_size), loader, strict=True):
                usable = [(todo[first + j], s) for j, s in enumerate(samples) if s.ids]
                codes = self.speech_tokenizer.encode([s.audio for _, s in usable]) if usable else []
                for (index, _), clip_codes in zip(usable, codes, strict=True):
                    self._write(keys[index], clip_codes.numpy())
                for j, sample in enumerate(samples):
                    if sample.skipped:
                        (self.directory / f"{keys[todo[first + j]]}.skipped.json").write_text(
                            json.dumps(sample.skipped)
                        )
                bar.update(len(samples))
        world.barrier()

        results: list[np.ndarray | None] = []
        skipped = SkippedExamples()
        vocab_size = self.speech_tokenizer.config.vocab_size
        for example, key in zip(examples, keys, strict=True):
            if key is None:
                codes = example.codes.astype(np.int64)
            elif (entry := self.directory / f"{key}.npy").is_file():
                codes = np.load(entry)
            else:
                skipped.add(tuple(pair) for pair in json.loads((self.directory / f"{key}.skipped.json").read_text()))
                results.append(None)
                continue
            if len(codes) and codes.max() >= vocab_size:
                raise DataError(
                    f"{example.id}: code {codes.max()} is past this speech tokenizer's {vocab_size} codes: "
                    "the token export was made with another tokenizer; export again with this one"
                )
            results.append(codes)
        return results, skipped

    def _quantize_cached_frames(
        self, examples: Sequence[Example], keys: list[str | None], todo: list[int], progress: bool, batch_size: int = 64
    ) -> list[int]:
        """Write the codes of the clips in todo whose encoder frames are cached; return the others."""
        found, rest = [], []
        for index in todo:
            cached = self.frames.clip_frames(examples[index])
            if cached is None:
                rest.append(index)
            else:
                found.append((index, *cached))
        speech = self.speech_tokenizer
        with tqdm(
            total=len(found), desc="sound codes (cached frames)", unit="clip", disable=not progress or not found
        ) as bar:
            for first in range(0, len(found), batch_size):
                batch = found[first : first + batch_size]
                frames = torch.stack([frames for _, frames, _ in batch]).to(speech.device, torch.float32)
                with torch.no_grad():
                    codes = speech.bottleneck.quantize(frames).cpu()  # (B, T / downsample)
                for (index, _, samples), clip_codes in zip(batch, codes, strict=True):
                    self._write(keys[index], clip_codes[: speech.num_codes(samples)].numpy())
                bar.update(len(batch))
        return rest

    def _known(self, key: str) -> bool:
        return (self.directory / f"{key}.npy").is_file() or (self.directory / f"{key}.skipped.json").is_file()

    def _write(self, key: str, codes: np.ndarray) -> None:
        partial = self.directory / f".{key}.partial"
        with open(partial, "wb") as f:
            np.save(f, codes.astype(np.int16 if codes.max(initial=0) < 2**15 else np.int32))
        partial.rename(self.directory / f"{key}.npy")


def user_turn(codes: np.ndarray, text: str | None = None, text_first: bool = False) -> dict[str, Any]:
    """A user message holding one clip's codes and a text part: after the clip (the order of
    `SpeechChat.transcribe`), or before it (the CLI's and OpenAI clients' order)."""
    if not text:
        return {"role": "user", "content": [codes]}
    return {"role": "user", "content": [text, codes] if text_first else [codes, text]}


def render(conversation: Conversation) -> list[dict[str, str]]:
    """Messages with string contents, as `SpeechChat.render` makes them: parts joined by its joiner, codes as
    their sound-token string."""
    rendered = []
    for message in conversation:
        content = message["content"]
        if not isinstance(content, str):
            content = message_text([p if isinstance(p, str) else codes_to_string(p) for p in content])
        rendered.append({"role": message["role"], "content": content})
    return rendered


class ChatTokens(NamedTuple):
    """One conversation as the LLM reads it. ids: (L,) int64; learned: (L,) bool, the assistant's tokens."""

    ids: np.ndarray
    learned: np.ndarray


def chat_tokens(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> ChatTokens:
    """The conversation through the tokenizer's chat template, and which tokens the assistant says.

    An assistant turn's tokens are what the template adds between the conversation before it (rendered with
    the generation prompt, the text SpeechChat hands the model) and the conversation through it: the reply and
    the end-of-turn marker, without trailing white space. Each span is tokenized on its own, so the prompt's
    ids are exactly those SpeechChat gives the model, and the reply's those it would generate.
    """
    messages = render(conversation)
    full = _template(tokenizer, messages, generation_prompt=False)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if turn == 0:
            raise DataError("a conversation starts with an assistant turn: the assistant answers a user turn")
        before = _template(tokenizer, messages[:turn], generation_prompt=True)
        through = _template(tokenizer, messages[: turn + 1], generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(
                "this LLM's chat template renders a conversation differently from its beginning (e.g. it drops "
                "earlier turns' reasoning), so the assistant's tokens cannot be told apart; use a template where "
                "each turn extends the text before it"
            )
        spans.append((len(before), len(before) + len(through[len(before) :].rstrip())))
    ids: list[int] = []
    learned: list[bool] = []
    cut = 0
    for start, end in [*spans, (len(full), len(full))]:
        for text, learn in ((full[cut:start], False), (full[start:end], True)):
            if text:
                piece = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += piece
                learned += [learn] * len(piece)
        cut = end
    return ChatTokens(np.asarray(ids, dtype=np.int64), np.asarray(learned, dtype=bool))


def _template(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


class PackedSequences(Dataset):
    """Packs of conversations as (ids (L,), targets (L,), position ids (L,)) int64 tensors; a target is the
    next token where the assistant says it, IGNORE elsewhere (a conversation's last token predicts nothing,
    so no conversation learns from the next one)."""

    def __init__(self, sequences: Sequence[ChatTokens], packs: Sequence[Sequence[int]]):
        self.sequences, self.packs = sequences, packs
        self.lengths = [sum(len(sequences[i].ids) for i in pack) for pack in packs]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, targets, positions = [], [], []
        for i in self.packs[index]:
            sequence = self.sequences[i]
            target = np.where(sequence.learned, sequence.ids, IGNORE)
            ids.append(sequence.ids)
            targets.append(np.append(target[1:], IGNORE))
            positions.append(np.arange(len(sequence.ids)))
        return tuple(torch.from_numpy(np.concatenate(parts)) for parts in (ids, targets, positions))


class TokenBatch(NamedTuple):
    ids: torch.Tensor  # (B, L) int64 token ids, right-padded
    targets: torch.Tensor  # (B, L) the next token where it is learned, else IGNORE
    positions: torch.Tensor  # (B, L) position ids, restarting at 0 for each conversation and for the padding


class PairedPacks(Dataset):
    """Students' and teachers' packs side by side: pack i of each holds the same conversations in the same order,
    so their target positions correspond one to one."""

    def __init__(self, students: PackedSequences, teachers: PackedSequences):
        self.students, self.teachers = students, teachers
        self.lengths = students.lengths

    def __len__(self) -> int:
        return len(self.students)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return self.students[index], self.teachers[index]


class DistillBatch(NamedTuple):
    student: TokenBatch
    teacher: TokenBatch  # the same targets, in the same order, at its own positions

    @property
    def ids(self) -> torch.Tensor:
        return self.student.ids

    @property
    def targets(self) -> torch.Tensor:
        return self.student.targets


def collate_pairs(items: list[tuple[tuple, tuple]], pad_id: int) -> DistillBatch:
    return DistillBatch(*(collate_packs([item[side] for item in items], pad_id) for side in (0, 1)))


def collate_packs(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], pad_id: int) -> TokenBatch:
    """Right-pad packs to the longest; padding is a block of its own (positions from 0) with no targets."""
    length = max(len(ids) for ids, _, _ in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    targets = torch.full((len(items), length), IGNORE, dtype=torch.long)
    positions = torch.arange(length).repeat(len(items), 1)
    for row, (row_ids, row_targets, row_positions) in enumerate(items):
        n = len(row_ids)
        ids[row, :n], targets[row, :n] = row_ids, row_targets
        positions[row, :n] = row_positions
        positions[row, n:] = torch.arange(length - n)
    return TokenBatch(ids, targets, positions)


def packed_conversations(
    conversations: Sequence[Conversation | Distilled],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    pack: bool,
    skipped: SkippedExamples,
) -> tuple[Dataset, Callable, int]:
    """The conversations as token ids in rows of ≤ max_tokens (several to a row with `pack`), the collate function
    for them, and how many were kept; distilled ones as student and teacher rows side by side. Longer
    conversations are left out and added to `skipped`."""
    distilled = [isinstance(item, Distilled) for item in conversations]
    if any(distilled) and not all(distilled):
        raise DataError("distilled and plain conversations cannot share a run")
    students, teachers = [], []
    for number, item in enumerate(conversations):
        student, teacher = item if isinstance(item, Distilled) else (item, None)
        tokens = chat_tokens(tokenizer, student)
        taught = chat_tokens(tokenizer, teacher) if teacher is not None else None
        if taught is not None and not np.array_equal(tokens.ids[tokens.learned], taught.ids[taught.learned]):
            raise DataError(f"conversation {number}: the student's replies are not the teacher's")
        if len(tokens.ids) <= max_tokens and (taught is None or len(taught.ids) <= max_tokens):
            students.append(tokens)
            teachers.append(taught)
        else:
            skipped.add([(f"conversation {number}", TOO_LONG)])
    if not students:
        raise DataError(f"no usable conversations ({skipped})")
    lengths = [max(len(s.ids), len(t.ids) if t is not None else 0) for s, t in zip(students, teachers, strict=True)]
    packs = best_fit_decreasing(lengths, max_tokens) if pack else [[i] for i in range(len(students))]
    if any(distilled):
        dataset = PairedPacks(PackedSequences(students, packs), PackedSequences(teachers, packs))
        return dataset, collate_pairs, len(students)
    return PackedSequences(students, packs), collate_packs, len(students)
