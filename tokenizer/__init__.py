"""Speech → sound tokens: audio input, the frozen Whisper backbone, the quantizer bottleneck."""

from auralm.tokenizer.audio import SAMPLE_RATE, AudioError, Window, load_audio, split_windows
from auralm.tokenizer.backbone import (
    Transcript,
    corpus_word_error_rate,
    detect_language,
    log_mel,
    normalize_text,
    transcribe,
    word_error_rate,
)
from auralm.tokenizer.config import TokenizerConfig
from auralm.tokenizer.speech_tokenizer import SpeechTokenizer
from auralm.tokenizer.token_format import TokenFormatError, codes_to_string, string_to_codes

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "SpeechTokenizer",
    "TokenFormatError",
    "TokenizerConfig",
    "Transcript",
    "Window",
    "codes_to_string",
    "corpus_word_error_rate",
    "detect_language",
    "load_audio",
    "log_mel",
    "normalize_text",
    "split_windows",
    "string_to_codes",
    "transcribe",
    "word_error_rate",
]
