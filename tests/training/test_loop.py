"""The training loop's helpers: the log window (means over the steps it saw, however few a resume left it) and
the learning-rate schedules."""

import itertools
import time

import pytest
import torch

from auralm.training.loop import LogWindow, lr_schedule


def test_a_log_window_averages_the_steps_it_saw():
    window = LogWindow()
    for loss in (3.0, 2.0, 1.0):
        window.add({"loss": loss, "tokens": 100.0})
    assert window.means() == {"loss": 2.0, "tokens": 100.0}
    window.add({"loss": 4.0, "tokens": 50.0})  # a short window, as a run resumed two steps before a log has
    assert window.means() == {"loss": 4.0, "tokens": 50.0}
    assert window.means() == {}


def test_a_log_window_rates_a_total_over_its_own_seconds():
    window = LogWindow()
    window.add({"tokens": 1000.0})
    time.sleep(0.05)
    assert 0 < window.per_second("tokens") <= 1000.0 / 0.05
    window.means()  # the next window's clock starts now: 10 tokens in far less than 0.05 s
    window.add({"tokens": 10.0})
    assert window.per_second("tokens") > 10.0 / 0.05


def _lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    """The learning rate of each of the next `steps` optimizer steps."""
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_the_cosine_schedule_warms_up_then_falls_to_a_tenth():
    rates = _lrs(lr_schedule(_optimizer(), warmup_steps=4, total_steps=24), 30)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a > b for a, b in itertools.pairwise(rates[4:25]))  # falling all the way
    assert rates[14] == pytest.approx(0.55)  # half way down the cosine: the mean of 1 and 0.1
    assert rates[24:] == pytest.approx([0.1] * 6)


def test_warmup_stable_decay_holds_the_peak_then_falls_linearly_to_a_tenth():
    rates = _lrs(lr_schedule(_optimizer(), warmup_steps=4, total_steps=40, decay_steps=10), 44)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4:30] == pytest.approx([1.0] * 26)
    assert rates[30:41] == pytest.approx([1 - 0.09 * i for i in range(11)])
    assert rates[41:] == pytest.approx([0.1] * 3)


def test_a_stable_phase_checkpoint_cools_down_when_resumed_with_a_nearer_end():
    """The run's state holds no schedule settings: a copy resumed at step 50 with total_steps 60 decays from there."""
    running = lr_schedule(_optimizer(), warmup_steps=4, total_steps=1000, decay_steps=10)
    _lrs(running, 50)
    cooled = lr_schedule(_optimizer(), warmup_steps=4, total_steps=60, decay_steps=10)
    cooled.load_state_dict(running.state_dict())
    assert _lrs(cooled, 12)[1:] == pytest.approx([0.91, 0.82, 0.73, 0.64, 0.55, 0.46, 0.37, 0.28, 0.19, 0.1, 0.1])
