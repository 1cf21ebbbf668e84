"""Sound tokens in an LLM's vocabulary, in Ichigo's order, pinned to the speech tokenizer that made them.

`<|sound_start|>`, `<|sound_end|>`, then `<|sound_0000|>` … `<|sound_{K}|>` are added as special
tokens (so on Llama 3.1, vocab 128256: start = 128256, end = 128257, sound_i = 128258 + i): K speech
codes and the mask code K, which the tokenizer emits where a frame is nearest to it, as Ichigo's does. New
embedding rows start at the mean of the old ones (input and output embeddings, tied or not); old
rows are untouched. The model's config records the speech tokenizer's hash and K, and
`check_speech_tokenizer` refuses a pairing whose hash differs (a model trained on one
tokenizer's codes reads another's as noise).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from auralm.errors import AuralmError
from auralm.tokenizer import SpeechTokenizer
from auralm.tokenizer.token_format import SOUND_END, SOUND_START, sound_token

HASH_KEY, CODES_KEY = "sound_tokenizer_hash", "sound_codes"


class SpeechTokenizerMismatchError(AuralmError):
    """An LLM trained on one speech tokenizer's codes, paired with another."""


def sound_vocabulary(vocab_size: int) -> list[str]:
    """The tokens an LLM needs for a speech tokenizer emitting codes 0 … vocab_size − 1, in Ichigo's order."""
    return [SOUND_START, SOUND_END, *(sound_token(i) for i in range(vocab_size))]


def add_sound_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> int:
    """Add the sound tokens for `vocab_size` codes to `tokenizer` (after its own: ids in Ichigo's order); returns
    how many it added."""
    return tokenizer.add_tokens(sound_vocabulary(vocab_size), special_tokens=True)


def add_sound_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, speech_tokenizer: SpeechTokenizer
) -> int:
    """Extend tokenizer and model with the sound tokens (once); record the speech tokenizer in the config.

    Returns how many tokens were added: 0 when the model already has them (an Ichigo checkpoint),
    which then must hold exactly the codes this tokenizer emits.
    """
    vocab_size = speech_tokenizer.config.vocab_size
    vocabulary = sound_vocabulary(vocab_size)
    known = tokenizer.get_vocab()  # builds a dict each call: once
    have = [t for t in vocabulary if t in known]
    if (have and len(have) != len(vocabulary)) or sound_token(vocab_size) in known:
        raise SpeechTokenizerMismatchError(
            f"the LLM's tokenizer has sound tokens for a different codebook than this speech tokenizer's "
            f"{vocab_size} codes (0 … {vocab_size - 1}, the mask code included)"
        )
    added = 0
    if not have:
        added = add_sound_vocabulary(tokenizer, vocab_size)
        _grow_embeddings(model, len(tokenizer))
    if added or getattr(model.config, HASH_KEY, None) is None:
        # a model that already records the tokenizer it was trained with keeps it: check_speech_tokenizer
        # then refuses another one
        setattr(model.config, HASH_KEY, speech_tokenizer.tokenizer_hash)
        setattr(model.config, CODES_KEY, vocab_size)
    return added


def check_speech_tokenizer(
    model: PreTrainedModel, speech_tokenizer: SpeechTokenizer, allow_mismatch: bool = False
) -> None:
    """Raise SpeechTokenizerMismatchError unless the model was trained on this speech tokenizer's codes."""
    recorded = getattr(model.config, HASH_KEY, None)
    if recorded is None or allow_mismatch:
        return
    if recorded != speech_tokenizer.tokenizer_hash:
        raise SpeechTokenizerMismatchError(
            f"this LLM was trained on sound tokens of speech tokenizer {recorded[:12]}…, not of the one given "
            f"({speech_tokenizer.tokenizer_hash[:12]}…); load the tokenizer it was trained with, "
            "or pair them anyway with allow_mismatch=True (--allow-mismatch on the command line)"
        )


def _grow_embeddings(model: PreTrainedModel, size: int) -> None:
    """Resize to `size` rows; new rows (input and, if untied, output) = mean of the old ones."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for embedding in {
            id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None
        }.values():
            weight = embedding.weight
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
            bias = getattr(embedding, "bias", None)
            if bias is not None:
                bias[old:] = bias[:old].mean()
