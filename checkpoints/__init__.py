"""Where weights come from: packaged names, converters and safe loading."""

from auralm.checkpoints.errors import CheckpointError
from auralm.checkpoints.registry import WHISPER_MODELS
from auralm.checkpoints.whisper import load_whisper

__all__ = ["WHISPER_MODELS", "CheckpointError", "load_whisper"]
