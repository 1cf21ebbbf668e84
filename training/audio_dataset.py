"""Examples → batches: decoding in DataLoader workers, packing short clips into one window, skipping bad ones.

    dataset = AudioTextDataset(read_examples("train.jsonl"), window_seconds=10.0, pack=True)
    sampler = BucketBatchSampler(dataset.lengths, batch_size=32, seed=0, rank=rank, world_size=world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    skipped = SkippedExamples()
    for batch in loader:
        skipped.add(batch.skipped)
        …
    print(skipped)

A bad example (missing, empty, unreadable, too long) never stops training: `__getitem__` returns it as
a (id, reason) pair in `Sample.skipped`, `collate` passes those on in `Batch.skipped`, and the loop
tallies them in the main process, so the count is right however many worker processes decode.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from auralm.data import ArrowAudio, DataError, Example
from auralm.errors import AuralmError
from auralm.tokenizer import SAMPLE_RATE, load_audio
from auralm.training.packing import best_fit_decreasing

# Why an example was skipped.
MISSING = "missing"
EMPTY = "empty"
UNREADABLE = "unreadable"
TOO_LONG = "too long"  # longer than the window, alone or after the clips packed before it
# Packing budgets each clip this much over its header length: decoders and resampling may add a
# sample or two, and a pack that overflows its window drops its last clip.
PACK_SLACK_SECONDS = 0.01
GAP_SECONDS = 0.2  # silence between clips packed into one window


class Sample(NamedTuple):
    """One dataset item: a clip, or several packed into one window, or their codes.

    ids: the examples it holds, in order (empty when all were skipped).
    text: their transcripts joined by spaces.
    audio: (samples,) float32 16 kHz mono, the clips joined by silent gaps; None for code examples.
    codes: (T,) int64 sound tokens of a token-export example; None for audio examples.
    skipped: (id, reason) for each example left out.
    """

    ids: tuple[str, ...]
    text: str
    language: str | None
    audio: torch.Tensor | None
    codes: torch.Tensor | None
    skipped: tuple[tuple[str, str], ...]


class Batch(NamedTuple):
    """Samples collated; skipped samples are left out, so the batch may be smaller than asked (even empty).

    audio: (B, samples) float32, zero-padded to the longest; None for code examples.
    audio_lengths: (B,) int64, each clip's samples before padding; None for code examples.
    codes: B tensors (T_i,) int64 for code examples; None for audio examples.
    ids: per sample, the examples it holds.
    skipped: (id, reason) for every example left out of this batch.
    """

    audio: torch.Tensor | None
    audio_lengths: torch.Tensor | None
    codes: list[torch.Tensor] | None
    texts: list[str]
    languages: list[str | None]
    ids: list[tuple[str, ...]]
    skipped: list[tuple[str, str]]

    @property
    def size(self) -> int:
        return len(self.texts)


class _Skip(Exception):
    """An example that cannot be used; args[0] is the reason."""


class AudioTextDataset(Dataset[Sample]):
    """A map-style dataset of examples, or of packs of examples; `__getitem__` decodes (in DataLoader workers).

    window_seconds: the encoder window. Longer clips are skipped as too long; None allows any length
        (code examples are never decoded and never too long).
    pack: join short clips of the same language into windows (see `pack_examples`).
    gap_seconds: silence between packed clips.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        window_seconds: float | None = 30.0,
        pack: bool = False,
        gap_seconds: float = GAP_SECONDS,
    ):
        if pack and window_seconds is None:
            raise DataError("pack=True needs window_seconds: the length to pack clips into")
        self.window_samples = None if window_seconds is None else round(window_seconds * SAMPLE_RATE)
        self.gap_samples = round(gap_seconds * SAMPLE_RATE)
        self.packs = (
            pack_examples(examples, window_seconds, gap_seconds) if pack else [(example,) for example in examples]
        )
        # Seconds per item (unknown durations count as 0), for bucketing.
        self.lengths = [
            sum(e.seconds or 0.0 for e in members) + gap_seconds * (len(members) - 1) for members in self.packs
        ]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> Sample:
        members = self.packs[index]
        if members[0].codes is not None:
            return self._codes_sample(members)
        pieces, kept, skipped, total = [], [], [], 0
        for example in members:
            try:
                audio = self._decode(example)
                gap = self.gap_samples if kept else 0
                if self.window_samples is not None and total + gap + len(audio) > self.window_samples:
                    raise _Skip(TOO_LONG)
            except _Skip as skip:
                skipped.append((example.id, skip.args[0]))
                continue
            if gap:
                pieces.append(torch.zeros(gap))
            pieces.append(audio)
            kept.append(example)
            total += gap + len(audio)
        return Sample(
            ids=tuple(e.id for e in kept),
            text=" ".join(e.text for e in kept if e.text),
            language=members[0].language,
            audio=torch.cat(pieces) if pieces else None,
            codes=None,
            skipped=tuple(skipped),
        )

    def _codes_sample(self, members: tuple[Example, ...]) -> Sample:
        (example,) = members  # code examples are never packed: the LLM recipes pack token sequences themselves
        if len(example.codes) == 0:
            return Sample((), "", example.language, None, None, ((example.id, EMPTY),))
        codes = torch.from_numpy(example.codes).long()
        return Sample((example.id,), example.text, example.language, None, codes, ())

    def _decode(self, example: Example) -> torch.Tensor:
        """The example's audio (samples,) at 16 kHz, or _Skip with the reason it cannot be used."""
        if example.seconds == 0:
            raise _Skip(EMPTY)
        if self.window_samples is not None and example.seconds is not None:
            if example.seconds * SAMPLE_RATE > self.window_samples:
                raise _Skip(TOO_LONG)  # known from the header: not worth decoding
        source = example.audio.read() if isinstance(example.audio, ArrowAudio) else example.audio
        if isinstance(source, str):
            if not os.path.isfile(source):
                raise _Skip(MISSING)
            if os.path.getsize(source) == 0:
                raise _Skip(EMPTY)
        elif not source:
            raise _Skip(EMPTY)
        try:
            audio = load_audio(source, name=example.id)
        except (AuralmError, OSError) as e:
            raise _Skip(UNREADABLE) from e
        if self.window_samples is not None and len(audio) > self.window_samples:
            raise _Skip(TOO_LONG)
        return audio


def pack_examples(
    examples: Sequence[Example], window_seconds: float, gap_seconds: float = 0.2
) -> list[tuple[Example, ...]]:
    """Group examples into packs that fit one window: best-fit decreasing, deterministic, no seed needed.

    A pack's length is its clips' header durations plus `gap_seconds` between them (plus
    PACK_SLACK_SECONDS per clip) and stays within `window_seconds`. Only examples of the same language
    share a pack (one language token per transcript); examples of unknown length, or longer than the
    window, get a pack each. Within a pack the examples keep their order in `examples`; the packs come
    in the order of their first example.
    """
    # Every clip but a pack's first brings a gap: budget each clip as clip + gap, the window as window + gap.
    capacity = window_seconds + gap_seconds
    packs: list[list[int]] = []
    by_language: dict[str | None, list[int]] = {}
    for index, example in enumerate(examples):
        by_language.setdefault(example.language, []).append(index)
    for indices in by_language.values():
        sizes = {i: examples[i].seconds + PACK_SLACK_SECONDS + gap_seconds for i in indices if examples[i].seconds}
        packs += [[i] for i in indices if i not in sizes or sizes[i] > capacity]
        fitting = [i for i in indices if i in sizes and sizes[i] <= capacity]
        packs += [[fitting[j] for j in pack] for pack in best_fit_decreasing([sizes[i] for i in fitting], capacity)]
    return [tuple(examples[i] for i in sorted(pack)) for pack in sorted(packs, key=min)]


def collate(samples: list[Sample]) -> Batch:
    """Batch the usable samples and pass on the skipped examples of all of them."""
    skipped = [pair for sample in samples for pair in sample.skipped]
    samples = [sample for sample in samples if sample.ids]
    audio = lengths = codes = None
    if any(sample.codes is not None for sample in samples):
        codes = [sample.codes for sample in samples]
    else:
        clips = [sample.audio for sample in samples]
        lengths = torch.tensor([len(clip) for clip in clips], dtype=torch.long)
        audio = torch.zeros(len(clips), int(lengths.max()) if clips else 0)  # (B, samples)
        for row, clip in enumerate(clips):
            audio[row, : len(clip)] = clip
    return Batch(
        audio=audio,
        audio_lengths=lengths,
        codes=codes,
        texts=[sample.text for sample in samples],
        languages=[sample.language for sample in samples],
        ids=[sample.ids for sample in samples],
        skipped=skipped,
    )


class SkippedExamples:
    """The examples left out while loading, by reason; each counted once however many epochs skip it.

    The training loop adds every batch's `skipped` and prints this at the end. Under torchrun each
    rank sees its own share: gather `state_dict()`s to report them all.
    """

    def __init__(self):
        self.reasons: dict[str, str] = {}  # id → reason

    def add(self, skipped: Iterable[tuple[str, str]]) -> None:
        self.reasons.update(skipped)

    def __len__(self) -> int:
        return len(self.reasons)

    def counts(self) -> Counter[str]:
        return Counter(self.reasons.values())

    def __str__(self) -> str:
        if not self.reasons:
            return "skipped no examples"
        parts = []
        for reason, count in sorted(self.counts().items()):
            ids = [i for i, r in self.reasons.items() if r == reason]
            parts.append(f"{count} {reason} ({', '.join(ids[:3])}{', …' if count > 3 else ''})")
        return f"skipped {len(self.reasons)} examples: " + "; ".join(parts)

    def state_dict(self) -> dict[str, dict[str, str]]:
        return {"reasons": dict(self.reasons)}

    def load_state_dict(self, state: dict[str, dict[str, str]]) -> None:
        self.reasons = dict(state["reasons"])
