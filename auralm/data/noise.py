"""Clips without speech (silence, white noise, or sound codes drawn at random), for teaching a speech LLM to
refuse them and for checking that it does, and the refusal it is taught."""

from __future__ import annotations

import numpy as np

from auralm.tokenizer.token_format import NO_SPEECH_REPLY

NOISE_SECONDS = (1.0, 8.0)  # a noise clip's length, drawn uniformly
RANDOM_CODES, SILENCE, WHITE_NOISE = range(3)  # the kinds of noise, drawn uniformly
REFUSAL = NO_SPEECH_REPLY  # the default reply to a clip without speech


def noise_samples(kind: int, samples: int, generator: np.random.Generator) -> np.ndarray:
    """A 16 kHz clip without speech (samples,): SILENCE, or WHITE_NOISE at an RMS drawn from −60 to −20 dBFS."""
    level = 0.0 if kind == SILENCE else 10 ** generator.uniform(-3, -1)
    return np.clip(generator.standard_normal(samples) * level, -1, 1)
