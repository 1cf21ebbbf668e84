"""`SpeechTokenizer`: audio → sound tokens (25 per second by default) → text, batched, Ichigo/WhisperSpeech compatible.

tokenizer = SpeechTokenizer.from_pretrained("my-tokenizer/")   # or an Ichigo .pth / WhisperSpeech .model
codes = tokenizer.encode(["a.wav", "b.flac"])                  # [tensor (T_a,), tensor (T_b,)]
text = tokenizer.to_string(codes[0])                           # "<|sound_start|><|sound_0042|>…"
tokenizer.decode_text(codes)                                   # what Whisper's decoder reads from them
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from tqdm import tqdm
from whisper.model import Whisper

from auralm.checkpoints import CheckpointError, load_whisper, shipped_model
from auralm.checkpoints.registry import SHIPPED_TOKENIZER, names_shipped_tokenizer
from auralm.checkpoints.whisper_vq import read_whisper_vq
from auralm.tokenizer.audio import SAMPLE_RATE, AudioSource, Window, is_loaded_audio, load_audio, split_windows
from auralm.tokenizer.backbone import (
    FALLBACK_TEMPERATURES,
    decode_with_fallback,
    encode_mels,
    log_mel_for_tokens,
    resolve_language,
    use_flash_attention,
)
from auralm.tokenizer.bottleneck import CODE_DECIDING, QuantizerBottleneck
from auralm.tokenizer.config import TokenizerConfig
from auralm.tokenizer.token_format import codes_to_string, string_to_codes

FORMAT = "auralm-speech-tokenizer"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class SpeechTokenizer(nn.Module):
    """A frozen Whisper encoder/decoder around a trained quantizer bottleneck.

    Only the bottleneck is saved; the Whisper backbone is named in the config and
    loaded offline (see `auralm.checkpoints.load_whisper`).
    """

    def __init__(self, config: TokenizerConfig, whisper: Whisper):
        super().__init__()
        if (whisper.dims.n_audio_state, whisper.dims.n_mels) != (config.n_state, config.n_mels):
            raise CheckpointError(
                f"tokenizer needs a Whisper of width {config.n_state} with {config.n_mels} mels, "
                f"got width {whisper.dims.n_audio_state} with {whisper.dims.n_mels} (config names {config.whisper!r})"
            )
        self.config = config
        self.whisper = use_flash_attention(whisper.eval().requires_grad_(False))
        self.bottleneck = QuantizerBottleneck(config)

    @property
    def device(self) -> torch.device:
        return self.bottleneck.positional_embedding.weight.device

    # ---- audio → codes -------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        audio: AudioSource | Sequence[AudioSource],
        sample_rate: int = SAMPLE_RATE,
        batch_size: int = 16,
        progress: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sound codes for one clip or a list of clips, `num_codes(samples)` each (int64, on CPU).

        audio: a path, bytes, file object or array (at `sample_rate`, 16 kHz by default), or a list of them.
        Clips longer than the window (30 s by default) are split at quiet points; their windows' codes
        are concatenated.
        Windows of all clips are encoded together in batches; each is computed exactly as alone. Clips are decoded
        on the CPU, their log-mels made on the tokenizer's device (as `auralm export` makes them).
        """
        single = not isinstance(audio, (list, tuple))
        clips = [self._load(item, sample_rate).to(self.device) for item in ([audio] if single else audio)]
        windows = [(i, w) for i, clip in enumerate(clips) for w in self.windows(clip)]
        pieces: list[list[torch.Tensor]] = [[] for _ in clips]
        batches = range(0, len(windows), batch_size)
        for first in tqdm(batches, desc="encode", unit="batch", disable=not progress or len(batches) < 2):
            batch = windows[first : first + batch_size]
            mels = torch.stack([self.log_mel(clips[i][w.start : w.end]) for i, w in batch])
            for (clip_index, window), window_codes in zip(batch, self.encode_windows(mels), strict=True):
                pieces[clip_index].append(window_codes[: self.num_codes(window.end - window.start)].cpu())
        results = [torch.cat(parts) for parts in pieces]
        return results[0] if single else results

    def num_codes(self, num_samples: int) -> int:
        """Codes `encode` gives a 16 kHz clip of num_samples: ⌈n / 640⌉ at Ichigo's 25 per second."""
        return self.config.num_codes(num_samples)

    def windows(self, audio: torch.Tensor) -> list[Window]:
        """A 16 kHz clip (samples,) cut into this tokenizer's windows, at quiet points, on code boundaries."""
        return clip_windows(audio, self.config)

    def log_mel(self, window: torch.Tensor) -> torch.Tensor:
        """The log-mel of one window's audio (samples,), padded as Ichigo pads: (n_mels, 100 · window_seconds)."""
        return log_mel_for_tokens(window, self.config.n_mels, self.config.window_seconds)

    @torch.no_grad()
    def encode_windows(self, mels: torch.Tensor) -> torch.Tensor:
        """mels: (B, n_mels, 2T), as `log_mel` makes them. Returns all codes (B, T / downsample)."""
        mels = mels.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            frames = encode_mels(self.whisper, mels)  # (B, T, d)
            return self.bottleneck.quantize(frames.float())

    # ---- codes → text --------------------------------------------------------------------

    @torch.no_grad()
    def decode_text(
        self,
        codes: torch.Tensor | Sequence[int] | Sequence[torch.Tensor | Sequence[int]],
        language: str | None = None,
        prompt: str | None = None,
        batch_size: int = 16,
        temperatures: Sequence[float] = FALLBACK_TEMPERATURES,
    ) -> str | list[str]:
        """What Whisper's decoder reads from codes: one sequence (T,) or a list of them, batched.

        codes: a 1-D tensor or list of ints; or a list of them, or a 2-D tensor of rows.
        Sequences longer than one window (750 codes) are decoded window by window.
        language: e.g. "en" (None: detected on multilingual backbones); prompt: earlier text as context.
        temperatures: greedy first, then these when greedy loops; (0.0,) for deterministic output.
        """
        if isinstance(codes, torch.Tensor):
            single = codes.dim() == 1
        else:
            single = len(codes) == 0 or isinstance(codes[0], int)
        sequences = [self._check_codes(c) for c in ([codes] if single else codes)]
        window = self.config.codes_per_window
        pieces = [
            (i, seq[start : start + window]) for i, seq in enumerate(sequences) for start in range(0, len(seq), window)
        ]
        texts: list[list[str]] = [[] for _ in sequences]
        dtype = next(self.whisper.parameters()).dtype
        language = resolve_language(self.whisper, language)
        for first in range(0, len(pieces), batch_size):
            batch = pieces[first : first + batch_size]
            padded = nn.utils.rnn.pad_sequence(
                [p for _, p in batch], batch_first=True, padding_value=self.config.mask_code
            )
            features = self.bottleneck.dequantize(padded.to(self.device)).to(dtype)  # (B, 1500, d)
            seconds = padded.shape[1] / self.config.codes_per_second
            results = decode_with_fallback(self.whisper, features, language, prompt, temperatures, seconds)
            for (seq_index, _), result in zip(batch, results, strict=True):
                texts[seq_index].append(result.text.strip())
        results = [" ".join(t for t in parts if t) for parts in texts]
        return results[0] if single else results

    # ---- token strings -------------------------------------------------------------------

    def to_string(self, codes: torch.Tensor | Sequence[int]) -> str:
        """Ichigo's token string for one sequence of codes."""
        return codes_to_string(self._check_codes(codes))

    def from_string(self, text: str) -> torch.Tensor:
        """Codes (T,) from one token string; a malformed string or out-of-range code raises TokenFormatError."""
        return string_to_codes(text, self.config.vocab_size)

    # ---- identity ------------------------------------------------------------------------

    @property
    def tokenizer_hash(self) -> str:
        """SHA-256 of everything that decides the codes: the Whisper encoder, the encode half of
        the bottleneck and the speech codes. An LLM trained on these tokens records it.
        Values are hashed as float32, so moving the tokenizer between devices keeps its hash."""
        decisive = {f"whisper.encoder.{k}": v for k, v in self.whisper.encoder.state_dict().items()}
        decisive |= {k: v for k, v in self.bottleneck.state_dict().items() if k.startswith(CODE_DECIDING)}
        decisive["codebook"] = self.bottleneck.codebook  # every row is searched, the mask code's too
        settings = {
            k: getattr(self.config, k) for k in ("n_codes", "downsample", "pooling", "n_mels", "window_seconds")
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name in sorted(decisive):
            tensor = decisive[name].detach().float().contiguous().cpu()
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    # ---- checkpoints ---------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors (the bottleneck; the backbone is named, not copied).

        dtype: store the weights in this floating type (float16 halves the file). The tokenizer itself is
        rounded to it first, so the hash recorded is the one it loads back with.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if dtype is not None:
            self.bottleneck.to(dtype).to(torch.float32)
        state = {
            k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().cpu()
            for k, v in self.bottleneck.state_dict().items()
        }
        safetensors.torch.save_file(state, directory / WEIGHTS_FILE, metadata={"format": FORMAT})
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        config["tokenizer_hash"] = self.tokenizer_hash
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike | None = None,
        whisper: str | os.PathLike | Whisper | None = None,
        device: str | torch.device = "cpu",
    ) -> SpeechTokenizer:
        """Load "default" or None (the speech tokenizer shipped with auralm), an auralm folder (config.json +
        model.safetensors) or an Ichigo / WhisperSpeech checkpoint file (.pth, .model, Lightning .ckpt),
        read without running code from it.

        whisper: the backbone (a name, .pt path, CTranslate2 folder or model); default: the one
        the checkpoint names. An auralm folder loaded with its own backbone must reproduce the hash it
        records, so changed weights never pass for the tokenizer an LLM was trained on.
        """
        path = shipped_model(SHIPPED_TOKENIZER) if names_shipped_tokenizer(source) else Path(source)
        recorded = None
        if path.is_dir():
            fields, state_dict = _read_auralm_folder(path)
            recorded = fields.pop("tokenizer_hash", None)
        elif path.is_file():
            fields, state_dict = read_whisper_vq(path)
        else:
            raise CheckpointError(f"{path}: no such tokenizer folder or checkpoint file")
        own_backbone = whisper is None
        if isinstance(whisper, (str, os.PathLike)):
            fields["whisper"] = str(whisper)
        if not isinstance(whisper, Whisper):
            if not fields.get("whisper"):
                raise CheckpointError(
                    f"{path}: the checkpoint does not name its Whisper backbone; pass whisper= (--whisper on the command line)"
                )
            whisper = load_whisper(fields["whisper"])
        fields.setdefault("n_mels", whisper.dims.n_mels)
        try:
            config = TokenizerConfig.from_dict(fields)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad tokenizer config: {e}") from e
        tokenizer = cls(config, whisper)
        try:
            tokenizer.bottleneck.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit the tokenizer config: {e}") from e
        if own_backbone and recorded is not None and recorded != tokenizer.tokenizer_hash:
            raise CheckpointError(
                f"{path}: the weights do not match the hash in {CONFIG_FILE} ({recorded[:12]}…): the files were changed "
                "or its Whisper backbone differs; save the tokenizer again with save_pretrained"
            )
        return tokenizer.to(device)

    # ---- helpers -------------------------------------------------------------------------

    def _load(self, item: AudioSource, sample_rate: int) -> torch.Tensor:
        if is_loaded_audio(item, sample_rate):  # load_audio would return it unchanged: skip the copies
            return item
        is_array = isinstance(item, torch.Tensor) or hasattr(item, "__array_interface__")
        return load_audio(item, sample_rate if is_array else None)

    def _check_codes(self, codes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.long).cpu()
        if codes.dim() != 1:
            raise ValueError(f"codes must be one sequence (T,), got shape {tuple(codes.shape)}")
        if len(codes) and (codes.min() < 0 or codes.max() >= self.config.vocab_size):
            raise ValueError(f"codes must lie in 0 … {self.config.vocab_size - 1}, got {codes.min()} … {codes.max()}")
        return codes


def clip_windows(audio: torch.Tensor, config: TokenizerConfig) -> list[Window]:
    """`SpeechTokenizer.windows` without the model, for DataLoader workers (`auralm export`)."""
    seconds = config.window_seconds
    return split_windows(audio, seconds, seconds * 2 / 3, step=config.samples_per_code)


def window_mels(audio: torch.Tensor, config: TokenizerConfig) -> tuple[torch.Tensor, list[int]]:
    """A 16 kHz clip (samples,) as `encode` feeds it to `encode_windows`, without the model (for `auralm export`,
    on the clip's device): its windows' log-mels (W, n_mels, 100 · window_seconds) and the codes each window keeps."""
    windows = clip_windows(audio, config)
    mels = [log_mel_for_tokens(audio[w.start : w.end], config.n_mels, config.window_seconds) for w in windows]
    return torch.stack(mels), [config.num_codes(w.end - w.start) for w in windows]


def read_config(source: str | os.PathLike | None = None) -> TokenizerConfig:
    """A speech tokenizer's config without the tokenizer: "default" or None (the shipped one) or an auralm folder
    read from its config.json alone, an Ichigo / WhisperSpeech file from its weights; no Whisper is loaded
    (n_mels, when the file does not say, is Whisper's 80)."""
    path = shipped_model(SHIPPED_TOKENIZER) if names_shipped_tokenizer(source) else Path(source)
    if path.is_dir():
        fields = _read_auralm_config(path)
        fields.pop("tokenizer_hash", None)
    elif path.is_file():
        fields, _ = read_whisper_vq(path)
    else:
        raise CheckpointError(f"{path}: no such tokenizer folder or checkpoint file")
    try:
        return TokenizerConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad tokenizer config: {e}") from e


def _read_auralm_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: not a tokenizer folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        fields = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
    if fields.pop("format", None) != FORMAT:
        raise CheckpointError(f"{config_path}: not an auralm speech tokenizer config")
    if fields.pop("format_version", None) != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: written by a newer auralm (format version); upgrade auralm")
    return fields


def _read_auralm_folder(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    weights_path = directory / WEIGHTS_FILE
    fields = _read_auralm_config(directory)
    if not weights_path.is_file():
        raise CheckpointError(f"{directory}: not a tokenizer folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        state_dict = safetensors.torch.load_file(weights_path)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({e})") from e
    return fields, state_dict
