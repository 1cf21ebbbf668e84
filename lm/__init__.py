"""Speech tokens in Hugging Face causal LMs: vocabulary, loading, chat over audio, attention."""

from auralm.lm.attention import ATTENTION_NAME, register_attention
from auralm.lm.chat import ContextLengthError, SpeechChat
from auralm.lm.loading import DEFAULT_LLM, load_llm
from auralm.lm.merge import merge_speech_llm
from auralm.lm.messages import tokens_to_prompt
from auralm.lm.vocabulary import SpeechTokenizerMismatchError, add_sound_tokens, check_speech_tokenizer

__all__ = [
    "ATTENTION_NAME",
    "DEFAULT_LLM",
    "ContextLengthError",
    "SpeechChat",
    "SpeechTokenizerMismatchError",
    "add_sound_tokens",
    "check_speech_tokenizer",
    "load_llm",
    "merge_speech_llm",
    "register_attention",
    "tokens_to_prompt",
]
