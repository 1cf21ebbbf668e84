"""A recipe's settings: a YAML file (flat keys, torchtune style) plus `key=value` overrides, into a dataclass.

    config = load_config(TokenizerTrainingConfig, "training/configs/tokenizer.yaml", ["lr=3e-4", "max_steps=50"])

Values are parsed as YAML (`3e-4`, `true`, `null`, `[1, 2]`) and checked against the dataclass's field
types, so a typo in a key or a word where a number belongs fails before anything runs. A field that is itself
a dataclass (the tokenizer recipe's `shape`, a `TokenizerConfig`) is declared once, where it lives: its keys
are the config's keys too (flat), except those its field's metadata lists as `derived` (set by the recipe).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from auralm.errors import AuralmError

T = TypeVar("T")
CONFIGS = Path(__file__).parent / "configs"  # the packaged configs, one per recipe


class ConfigError(AuralmError):
    """A config file or override that does not fit the recipe; the message names the key."""


@dataclass
class RunConfig:
    """What every recipe's config holds beside its own keys: the optimisation and the run's bookkeeping.
    A recipe's config subclasses it (and may give a key another default)."""

    output_dir: str = "runs/run"
    # optimisation
    batch_size: int = 16  # items per optimizer step, over all ranks and micro-batches
    micro_batches: int = 1  # gradient accumulation
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 1000
    decay_steps: int | None = None  # None: cosine to max_steps; N: the peak held, then N linear steps down
    grad_clip: float = 1.0
    bf16: bool = True  # autocast (the CPU here has AVX512-bf16)
    seed: int = 0
    device: str = "auto"  # auto: CUDA when there is one
    # bookkeeping
    log_every: int = 10
    save_every: int = 100
    save_every_minutes: float | None = 10.0
    keep_checkpoints: int = 2
    max_minutes: float | None = None  # stop (and save) after this long
    num_workers: int = 0  # DataLoader workers
    threads: int | None = None  # torch CPU threads
    progress: bool = True


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> T:
    """The dataclass `cls` from the YAML file at `path` (None: defaults only), then `key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read this config ({e})") from e
        if not isinstance(loaded, (dict, type(None))):
            raise ConfigError(f"{path}: a config is a mapping of keys to values")
        values |= loaded or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        values[key.strip()] = yaml.safe_load(raw)
    hints = typing.get_type_hints(cls)
    nested = {f.name: f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}
    owner = {key: None for key in hints if key not in nested}  # key → the nested field holding it (None: cls)
    for name, f in nested.items():
        owner |= {sub: name for sub in typing.get_type_hints(hints[name]) if sub not in f.metadata.get("derived", ())}
    unknown = sorted(set(values) - set(owner))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; this recipe has: {', '.join(owner)}")
    try:
        checked = {key: _checked(key, value, hints[key]) for key, value in values.items() if owner[key] is None}
        for name, f in nested.items():
            sub_hints = typing.get_type_hints(hints[name])
            sub = {key: _checked(key, value, sub_hints[key]) for key, value in values.items() if owner[key] == name}
            checked[name] = dataclasses.replace(f.default_factory(), **sub)
        return cls(**checked)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def packaged_config(name_or_path: str) -> Path:
    """A config file: a path as given, or the name of one shipped in auralm/training/configs ("tokenizer")."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        return path
    packaged = CONFIGS / f"{name_or_path}.yaml"
    if not packaged.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise ConfigError(f"no config {name_or_path!r}: give a YAML file, or one of the packaged configs: {names}")
    return packaged


def config_dict(config: Any) -> dict[str, Any]:
    """The settings as plain values (for checkpoints and metrics), nested ones as their own mappings."""
    return dataclasses.asdict(config)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _checked(key: str, value: Any, kind: Any) -> Any:
    options = (
        typing.get_args(kind)
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
        else (kind,)
    )
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str) and _FLOAT.fullmatch(value):
            return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        if option in (int, str, bool) and type(value) is option:
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            return value
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key {key!r}: expected {names}, got {value!r}")
