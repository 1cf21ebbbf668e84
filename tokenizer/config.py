"""The dimensions of a speech tokenizer, stored in its checkpoint as config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from whisper.audio import N_SAMPLES, SAMPLE_RATE

WHISPER_SECONDS = 30  # Whisper's receptive field
WHISPER_FRAMES = 1500  # Whisper encoder frames per 30 s window
SAMPLES_PER_FRAME = N_SAMPLES // WHISPER_FRAMES  # 320: the mel hop (160) × the encoder's stride-2 conv → 50 Hz
FRAMES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_FRAME  # 50


@dataclass(frozen=True)
class TokenizerConfig:
    """Shape of the Whisper-encoder + VQ bottleneck ("WhisperVQ") of Ichigo and WhisperSpeech.

    n_state must equal the Whisper encoder's width (384 tiny, 512 base, 1024 medium).
    The codebook holds n_codes speech codes plus one mask code (index n_codes) for padding. Encoding
    searches all n_codes + 1 rows, as Ichigo does, so a frame nearest the mask row gets code n_codes:
    the sound-token vocabulary has `vocab_size` = n_codes + 1 tokens. Every rate and count derives
    from `downsample`: codes come at 50 Hz / downsample (25 per second for Ichigo's 2).

    window_seconds: audio per encoder window. 30 is Whisper's and Ichigo's; a shorter window runs the
    encoder on fewer frames (its positional embedding cut to match), much cheaper for short clips.
    Training and encoding use the same window; longer audio is split into windows of that length.
    """

    whisper: str = "tiny.en"  # the backbone: a name, .pt file or CTranslate2 folder (see load_whisper)
    n_mels: int = 80
    n_state: int = 384
    n_head: int = 6
    n_codes: int = 512
    codebook_dim: int = 64
    downsample: int = 2  # encoder frames per code: 50 Hz → 25 Hz
    pooling: str = "mean"  # how those frames become one: "mean" (Ichigo) or "stride" (early WhisperSpeech)
    depth: int = 1  # attention blocks on the decode path
    ffn_mult: int = 4
    query_mult: float = 2.0  # attention logits are scaled by query_mult · 8 / head_width
    rope: bool = True
    window_seconds: int = WHISPER_SECONDS
    # How the codebook learns (vector-quantize-pytorch's EMA codebook); no effect on encoding.
    codebook_decay: float = 0.9  # EMA decay of the code rows
    kmeans_init: bool = False  # True: rows start as k-means centroids of the first batch (else random)
    dead_code_threshold: float = 2.0  # a code used less than this (EMA count) is replaced by an input

    def __post_init__(self) -> None:
        if self.n_state % self.n_head:
            raise ValueError(f"n_state {self.n_state} is not divisible by n_head {self.n_head}")
        if self.pooling not in ("mean", "stride"):
            raise ValueError(f"pooling must be 'mean' or 'stride', got {self.pooling!r}")
        if not 1 <= self.window_seconds <= WHISPER_SECONDS:
            raise ValueError(f"window_seconds must be 1 … {WHISPER_SECONDS}, got {self.window_seconds}")
        if self.frames_per_window % self.downsample:
            raise ValueError(f"downsample {self.downsample} does not divide a window's {self.frames_per_window} frames")

    @property
    def mask_code(self) -> int:
        return self.n_codes

    @property
    def vocab_size(self) -> int:
        """Codes the tokenizer can emit, the mask code included: the sound tokens an LLM needs."""
        return self.n_codes + 1

    @property
    def head_width(self) -> int:
        return self.n_state // self.n_head

    @property
    def samples_per_code(self) -> int:
        """16 kHz samples per code: 640 (40 ms) for downsample 2."""
        return SAMPLES_PER_FRAME * self.downsample

    @property
    def codes_per_second(self) -> float:
        return SAMPLE_RATE / self.samples_per_code

    @property
    def frames_per_window(self) -> int:
        """Whisper encoder frames per window (1500 for 30 s)."""
        return self.window_seconds * FRAMES_PER_SECOND

    @property
    def codes_per_window(self) -> int:
        return self.frames_per_window // self.downsample

    def num_codes(self, num_samples: int) -> int:
        """Codes for a 16 kHz clip: one per started code span (⌈n / samples_per_code⌉), none for padding."""
        return -(-num_samples // self.samples_per_code)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown tokenizer config fields: {', '.join(sorted(unknown))}")
        return cls(**fields)
