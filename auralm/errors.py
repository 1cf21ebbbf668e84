"""`AuralmError`: the base of every error auralm raises on purpose (bad audio, weights, tokens, pairs).

Each sub-package derives its own from it (`AudioError`, `CheckpointError`, `TokenFormatError`,
`SpeechTokenizerMismatchError`), so a caller who wants "anything auralm refused" catches one type.
They are ValueErrors too: each is about a value the caller passed. This module imports nothing, so
any layer may depend on it.
"""


class AuralmError(ValueError):
    """Input or weights auralm cannot use; the message starts with what it is about and says what to do."""
