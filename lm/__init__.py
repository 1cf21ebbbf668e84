"""Speech tokens in Hugging Face causal LMs."""

from auralm.lm.attention import ATTENTION_NAME, register_attention

__all__ = ["ATTENTION_NAME", "register_attention"]
