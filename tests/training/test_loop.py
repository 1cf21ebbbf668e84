"""The training loop's log window: means over the steps it saw, however few a resume left it."""

import time

from auralm.training.loop import LogWindow


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
