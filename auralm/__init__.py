"""auralm: a frozen Whisper encoder + vector quantizer turns speech into sound tokens
that extend a Llama-family LLM's vocabulary. Sub-packages: `auralm.tokenizer`,
`auralm.lm`, `auralm.kernels`, `auralm.checkpoints` (`auralm.training` is to come)."""

__version__ = "0.1.0"
