"""Speech → sound tokens: audio input, the frozen Whisper backbone, the quantizer."""

from auralm.tokenizer.audio import AudioError, Window, load_audio, num_tokens, split_windows
from auralm.tokenizer.backbone import Transcript, detect_language, log_mel, transcribe, word_error_rate

__all__ = [
    "AudioError",
    "Transcript",
    "Window",
    "detect_language",
    "load_audio",
    "log_mel",
    "num_tokens",
    "split_windows",
    "transcribe",
    "word_error_rate",
]
