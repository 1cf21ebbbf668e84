"""Recipe configs: YAML files and key=value overrides become typed dataclasses, or one clear ConfigError."""

import pytest

from auralm.training.config import ConfigError, RunConfig, load_config


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.01\nmax_steps: 5\nmax_minutes: null\n")
    config = load_config(RunConfig, path, ["max_steps=7", "bf16=false", "lr=3"])
    assert (config.lr, config.max_steps, config.bf16, config.max_minutes) == (3.0, 7, False, None)
    assert isinstance(config.lr, float)


@pytest.mark.parametrize("written", ["5e-4", "5E-4", "+5e-04", "5.0e-4"])
def test_exponents_without_a_dot_are_floats(tmp_path, written):
    # YAML 1.1 reads 5e-4 as a string; a learning rate written so must still work, in a file and as an override
    assert load_config(RunConfig, None, [f"lr={written}"]).lr == pytest.approx(5e-4)
    path = tmp_path / "run.yaml"
    path.write_text(f"lr: {written}\n")
    assert load_config(RunConfig, path).lr == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [("lr=fast", "config key 'lr': expected float"), ("max_steps=1.5", "expected int"),
     ("steps=3", "unknown config key(s) steps"), ("lr", "expected key=value")],
)  # fmt: skip
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(RunConfig, None, [override])
