"""Where weights come from: packaged names, converters and safe loading."""

from auralm.checkpoints.errors import CheckpointError
from auralm.checkpoints.registry import DEFAULT_SPEECH_TOKENIZER, WHISPER_MODELS, shipped_model
from auralm.checkpoints.whisper import load_whisper

__all__ = ["DEFAULT_SPEECH_TOKENIZER", "WHISPER_MODELS", "CheckpointError", "load_whisper", "shipped_model"]
