"""Waveform augmentation for synthetic speech: speed (resampling, as tape does), a room's reverb, white or pink
noise at a signal-to-noise ratio, a telephone band and a peak level. `augment` applies what a plan chose; the
steps are also public for tests and other data."""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF

from auralm.tokenizer import SAMPLE_RATE

RATE_STEP = 50  # Hz; see speed_rate


def augment(audio: torch.Tensor, rate: int, choices: dict) -> torch.Tensor:
    """(T,) float32 at `rate` → (T',) at 16 kHz with the plan's `choices` applied (speed, reverb, noise,
    telephone, level_dbfs, seed); the seed drives the noise and the reverb tail, so the result is fixed."""
    generator = torch.Generator().manual_seed(choices["seed"])
    clip = to_16k(audio, rate, choices["speed"])
    if choices["reverb"]:
        clip = reverb(clip, **choices["reverb"], generator=generator)
    if choices["noise"]:
        noise = coloured_noise(clip.numel(), choices["noise"]["color"], generator)
        clip = add_noise(clip, noise, choices["noise"]["snr_db"])
    if choices["telephone"]:
        clip = telephone(clip)
    return clip * (10 ** (choices["level_dbfs"] / 20) / clip.abs().max().clamp(min=1e-6))


def speed_rate(speed: float) -> int:
    """The rate to resample to so that, read at 16 kHz, audio plays `speed` times faster: a multiple of 50 Hz,
    since resampling costs grow with rate / gcd(rate, source rate) (16000 / 1.0458 = 15299 Hz takes seconds)."""
    return RATE_STEP * round(SAMPLE_RATE / speed / RATE_STEP)


def to_16k(audio: torch.Tensor, rate: int, speed: float) -> torch.Tensor:
    """(T,) at `rate` → (T',) at 16 kHz, played `speed` times faster (tempo and pitch, as tape does)."""
    return AF.resample(audio, rate, speed_rate(speed))


def coloured_noise(length: int, color: str, generator: torch.Generator) -> torch.Tensor:
    """(length,) white noise, or pink noise (power ∝ 1/f: white noise's spectrum scaled by 1/√f)."""
    white = torch.randn(length, generator=generator)
    if color == "white":
        return white
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.numel(), dtype=torch.float32).clamp(min=1)
    return torch.fft.irfft(spectrum / f.sqrt(), n=length)


def add_noise(audio: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """audio + noise scaled so that the power ratio of the two is `snr_db`. Both (T,)."""
    scale = audio.pow(2).mean().sqrt() / (noise.pow(2).mean().sqrt() * 10 ** (snr_db / 20) + 1e-12)
    return audio + scale * noise


def reverb(audio: torch.Tensor, rt60_s: float, drr_db: float, generator: torch.Generator) -> torch.Tensor:
    """A room: convolution with a direct path plus a noise tail decaying 60 dB in `rt60_s` seconds, whose energy
    is `drr_db` below the direct path's. (T,) → (T,), the tail past the end cut."""
    t = torch.arange(round(rt60_s * SAMPLE_RATE)) / SAMPLE_RATE
    tail = torch.randn(t.numel(), generator=generator) * torch.exp(-math.log(1000) * t / rt60_s)  # -60 dB at rt60
    tail *= 10 ** (-drr_db / 20) / tail.pow(2).sum().sqrt()
    tail[0] = 1.0
    return AF.fftconvolve(audio, tail)[: audio.numel()]


def telephone(audio: torch.Tensor) -> torch.Tensor:
    """A phone line: through 8 kHz and a 300–3400 Hz band, back at 16 kHz. (T,) → (T,)."""
    narrow = AF.resample(audio, SAMPLE_RATE, 8000)
    narrow = AF.lowpass_biquad(AF.highpass_biquad(narrow, 8000, 300.0), 8000, 3400.0)
    return AF.resample(narrow, 8000, SAMPLE_RATE)[: audio.numel()]
