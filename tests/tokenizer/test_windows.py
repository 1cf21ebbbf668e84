"""Window splitting: ≤ 30 s windows that cover the clip, cut on token boundaries at its quietest points."""

import itertools

import pytest
import torch

from auralm.tokenizer import TokenizerConfig, split_windows
from auralm.tokenizer.audio import SAMPLE_RATE

ICHIGO = TokenizerConfig()  # 640 samples per code
STEP = ICHIGO.samples_per_code


def noise(seconds: float, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed))


def assert_valid(windows, n: int, max_seconds: float = 30.0, config: TokenizerConfig = ICHIGO):
    assert windows[0].start == 0 and windows[-1].end == n
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    for w in windows:
        assert 0 < w.end - w.start <= max_seconds * SAMPLE_RATE
        assert w.start % config.samples_per_code == 0
    assert sum(config.num_codes(w.end - w.start) for w in windows) == config.num_codes(n)


@pytest.mark.parametrize("seconds", [0.001, 1.0, 29.99, 30.0, 30.04, 61.3, 95.0, 600.0])
def test_windows_cover_the_clip_within_limits(seconds):
    audio = noise(seconds)
    windows = split_windows(audio, step=STEP)
    assert_valid(windows, len(audio))
    if seconds <= 30:
        assert len(windows) == 1
    else:
        assert all(w.end - w.start >= 20 * SAMPLE_RATE for w in windows[:-1])


def test_95_seconds_gives_four_or_five_windows():
    assert 4 <= len(split_windows(noise(95.0))) <= 5


def test_cuts_land_in_the_quiet_gaps():
    # 70 s of noise with 150 ms gaps of silence at 24.0 s and 47.5 s: the cuts must fall inside them.
    audio = noise(70.0)
    gaps = [(24.0, 24.15), (47.5, 47.65)]
    for start, end in gaps:
        audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] = 0
    windows = split_windows(audio, step=STEP)
    assert_valid(windows, len(audio))
    cuts = [w.end / SAMPLE_RATE for w in windows[:-1]]
    assert len(cuts) == len(gaps)
    for cut, (start, end) in zip(cuts, gaps, strict=True):
        assert start + 0.05 - 0.02 <= cut <= end - 0.05 + 0.02  # the 100 ms span sits inside the gap, ±½ token


def test_a_cut_prefers_the_quietest_not_the_first_quiet_spot():
    audio = noise(40.0)
    audio[int(21 * SAMPLE_RATE) : int(21.2 * SAMPLE_RATE)] *= 0.1  # quiet
    audio[int(27 * SAMPLE_RATE) : int(27.2 * SAMPLE_RATE)] = 0  # quieter
    (first, _) = split_windows(audio)
    assert 27.0 <= first.end / SAMPLE_RATE <= 27.2


def test_silence_is_cut_as_late_as_allowed():
    windows = split_windows(torch.zeros(75 * SAMPLE_RATE))
    assert [w.end - w.start for w in windows] == [30 * SAMPLE_RATE, 30 * SAMPLE_RATE, 15 * SAMPLE_RATE]


def test_empty_clip_has_no_windows_and_bad_limits_are_refused():
    assert split_windows(torch.zeros(0)) == []
    with pytest.raises(ValueError, match="min_seconds"):
        split_windows(noise(1.0), max_seconds=10, min_seconds=20)


@pytest.mark.parametrize("n", [0, 1, 639, 640, 641, 480_000, 480_001])
def test_code_count_is_the_ceiling(n):
    assert ICHIGO.num_codes(n) == -(-n // 640) == (n + 639) // 640


@pytest.mark.parametrize("downsample", [1, 2, 3])
def test_the_code_rate_follows_downsample(downsample):
    config = TokenizerConfig(downsample=downsample)
    assert config.codes_per_second == 50 / downsample and config.codes_per_window == 1500 // downsample
    assert config.num_codes(SAMPLE_RATE) == round(50 / downsample)  # 1 s: 50, 25 or 17 (16.7 started)
    audio = noise(61.3)
    assert_valid(split_windows(audio, step=config.samples_per_code), len(audio), config=config)
