"""auralm: a frozen Whisper encoder + vector quantizer turns speech into sound tokens
that extend a Llama-family LLM's vocabulary. Sub-packages: `auralm.tokenizer`,
`auralm.lm`, `auralm.kernels`, `auralm.checkpoints`, `auralm.training`; the front ends (the `auralm`
command, the servers, the demos) are in `auralm.apps`.

The public API is importable from here (`from auralm import SpeechTokenizer, SpeechChat`); names
load on first use, so `import auralm` (and `auralm --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from auralm.errors import AuralmError

__version__ = "0.1.0"

_EXPORTS = {
    "SAMPLE_RATE": "auralm.tokenizer",
    "AudioError": "auralm.tokenizer",
    "TokenFormatError": "auralm.tokenizer",
    "SpeechTokenizer": "auralm.tokenizer",
    "load_audio": "auralm.tokenizer",
    "CheckpointError": "auralm.checkpoints",
    "load_whisper": "auralm.checkpoints",
    "SpeechChat": "auralm.lm",
    "SpeechTokenizerMismatchError": "auralm.lm",
    "add_sound_tokens": "auralm.lm",
    "load_llm": "auralm.lm",
    "tokens_to_prompt": "auralm.lm",
}
__all__ = ["AuralmError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'auralm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next lookup skips this function
    return value
