"""Whisper encoder frames of every training window, computed once and kept on disk in fp16.

The encoder is frozen, so a tokenizer's training reads the same frames every epoch: computing them
once turns a step's cost from encoder + bottleneck + decoder into bottleneck + decoder (on a 2-core
CPU, tiny.en's encoder alone takes about 0.25 s per 30 s window). A window's file is named by what
decides its frames (the backbone, the window length, the clips packed into it), so an interrupted
build resumes, and runs with the same data and backbone share it.

    cache = FeatureCache(run_dir / "features", tokenizer)
    windows = cache.build(dataset, world)                  # [CachedWindow, …] of the usable windows
    frames = cache.frames(windows[0])                      # (T, d) float16
    found = cache.clip_frames(example)                     # a clip's own window, if a run cached it: for its codes
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from auralm.data import Example
from auralm.distributed import World
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer
from auralm.tokenizer.backbone import encode_mels
from auralm.training.audio_dataset import GAP_SECONDS, AudioTextDataset, SkippedExamples


class CachedWindow(NamedTuple):
    index: int  # the window's item in the dataset
    key: str  # its file's name
    samples: int  # audio samples in the window, before padding
    text: str
    language: str | None


class FeatureCache:
    def __init__(self, directory: str | os.PathLike, tokenizer: SpeechTokenizer):
        self.directory, self.tokenizer = Path(directory), tokenizer

    def key(self, dataset: AudioTextDataset, index: int) -> str:
        return self._key(dataset.packs[index], dataset.gap_samples)

    def _key(self, members: tuple[Example, ...], gap_samples: int) -> str:
        config = self.tokenizer.config
        clips = [(e.id, e.audio if isinstance(e.audio, str) else repr(e.audio)) for e in members]
        identity = [config.whisper, config.window_seconds, gap_samples, clips]
        return hashlib.sha1(json.dumps(identity).encode()).hexdigest()

    def clip_frames(self, example: Example) -> tuple[torch.Tensor, int] | None:
        """The (T, d) float16 encoder frames and the audio samples of a clip that had a window of its own here
        (a tokenizer run without packing, on the same backbone and window length), or None."""
        entry = self._entry(self._key((example,), round(GAP_SECONDS * SAMPLE_RATE)))
        if not entry.is_file():
            return None
        with safetensors.safe_open(entry, "pt") as f:
            return f.get_tensor("frames"), int(f.metadata()["samples"])

    def build(
        self, dataset: AudioTextDataset, world: World, batch_size: int = 8, num_workers: int = 0, progress: bool = True
    ) -> tuple[list[CachedWindow], SkippedExamples]:
        """Encode the windows not cached yet (each rank its share), then list every usable window in
        dataset order, and the examples that could not be used."""
        keys = [self.key(dataset, i) for i in range(len(dataset))]
        self.directory.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(world.rank, len(dataset), world.size) if not self._entry(keys[i]).is_file()]
        loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        whisper = self.tokenizer.whisper
        with tqdm(total=len(todo), desc="encoder frames", unit="window", disable=not progress or not todo) as bar:
            for first, samples in zip(range(0, len(todo), batch_size), loader, strict=True):
                usable = [(todo[first + j], s) for j, s in enumerate(samples) if s.ids]
                if usable:
                    mels = torch.stack([self.tokenizer.log_mel(s.audio) for _, s in usable]).to(self.tokenizer.device)
                    with torch.no_grad():
                        frames = encode_mels(whisper, mels.to(next(whisper.parameters()).dtype)).half().cpu()
                    for (index, sample), window_frames in zip(usable, frames, strict=True):
                        self._write(keys[index], window_frames, sample)
                for j, sample in enumerate(samples):
                    if not sample.ids:
                        self._write_skip(keys[todo[first + j]], sample)
                bar.update(len(samples))
        world.barrier()
        return self._listing(dataset, keys)

    def frames(self, window: CachedWindow) -> torch.Tensor:
        """(T, d) float16 encoder frames of a cached window."""
        return safetensors.torch.load_file(self._entry(window.key))["frames"]

    def _entry(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def _write(self, key: str, frames: torch.Tensor, sample) -> None:
        meta = {"samples": str(len(sample.audio)), "text": sample.text, "language": sample.language or ""}
        meta["skipped"] = json.dumps(sample.skipped)
        partial = self.directory / f".{key}.partial"
        safetensors.torch.save_file({"frames": frames.contiguous()}, partial, metadata=meta)
        partial.rename(self._entry(key))

    def _write_skip(self, key: str, sample) -> None:
        (self.directory / f"{key}.skipped.json").write_text(json.dumps(sample.skipped))

    def _listing(self, dataset: AudioTextDataset, keys: list[str]) -> tuple[list[CachedWindow], SkippedExamples]:
        windows, skipped = [], SkippedExamples()
        for index, key in enumerate(keys):
            entry = self._entry(key)
            if entry.is_file():
                with safetensors.safe_open(entry, "pt") as f:
                    meta = f.metadata()
                windows.append(CachedWindow(index, key, int(meta["samples"]), meta["text"], meta["language"] or None))
                skipped.add(tuple(pair) for pair in json.loads(meta["skipped"]))
            else:
                skipped.add(tuple(pair) for pair in json.loads((self.directory / f"{key}.skipped.json").read_text()))
        return windows, skipped
