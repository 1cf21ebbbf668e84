"""Clips without speech for the LLM recipes that teach the refusal (sft, distill): uniformly random sound codes,
or the codes of silence or white noise, each with a request beside it half the time, before or after the clip."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import soundfile

from auralm.data.examples import Example
from auralm.data.noise import NOISE_SECONDS, RANDOM_CODES, noise_samples
from auralm.tokenizer import SAMPLE_RATE
from auralm.training.llm_recipe import LLMRecipe


class NoiseClip(NamedTuple):
    codes: np.ndarray  # (T,) sound codes
    request: str | None  # the text beside the clip, if any
    request_first: bool  # the request before the clip


def noise_clips(recipe: LLMRecipe, count: int, requests: list[str], seed: int) -> list[NoiseClip]:
    """`count` clips without speech, the same for the same seed on every rank and across resumed runs. The
    silence and white-noise audio is written once by rank 0 into output_dir/noise/ and encoded by the recipe's
    speech tokenizer like any clip (so their codes are what the model will hear)."""
    rng = np.random.default_rng([seed, 1])
    kinds = rng.integers(0, 3, size=count)
    seconds = rng.uniform(*NOISE_SECONDS, size=count)
    files = _noise_audio(recipe, kinds, seconds, seed)
    examples = [Example(id=file, text="", audio=file) for file in files if file]
    encoded = iter(recipe.code_cache.build(examples, recipe.world, progress=recipe.progress)[0])
    clips = []
    for kind, length in zip(kinds, seconds, strict=True):
        if kind == RANDOM_CODES:
            codes = rng.integers(
                0, recipe.speech.config.vocab_size, size=recipe.speech.num_codes(round(length * SAMPLE_RATE))
            )
        else:
            codes = next(encoded)
        request = requests[rng.integers(len(requests))] if requests and rng.random() < 0.5 else None
        clips.append(NoiseClip(codes, request, bool(rng.random() < recipe.config.instruction_first)))
    return clips


def _noise_audio(recipe: LLMRecipe, kinds: np.ndarray, seconds: np.ndarray, seed: int) -> list[str | None]:
    """The audio files of the silence and white-noise clips (None for random codes); a clip depends only on the
    seed and its number, so a file already written is kept."""
    folder = recipe.run_dir / "noise"
    files: list[str | None] = []
    for number, (kind, length) in enumerate(zip(kinds, seconds, strict=True)):
        if kind == RANDOM_CODES:
            files.append(None)
            continue
        file = folder / f"noise-{seed}-{number:06d}.flac"
        if recipe.world.is_main and not file.is_file():
            samples = noise_samples(kind, round(length * SAMPLE_RATE), np.random.default_rng([seed, 2, number]))
            folder.mkdir(parents=True, exist_ok=True)
            partial = file.with_name(f".{file.name}.partial")
            soundfile.write(partial, samples, SAMPLE_RATE, format="FLAC")
            partial.rename(file)
        files.append(str(file))
    recipe.world.barrier()
    return files
