import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from auralm.lm import add_sound_tokens
from auralm.lm.loading import SOUND_TOKENS_FILE
from auralm.lm.vocabulary import CODES_KEY, HASH_KEY, sound_vocabulary
from auralm.tokenizer import SpeechTokenizer

WORDS = [
    "<unk>",
    "<eos>",
    "<|user|>",
    "<|assistant|>",
    "hello",
    "what",
    "is",
    "this",
    "sound",
    "a",
    "the",
    "cat",
    "dog",
    "?",
    ".",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_text_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llama(tied: bool, initializer_range: float = 0.02) -> LlamaForCausalLM:
    """A random 2-layer Llama over WORDS. The default init gives replies that hardly depend on the prompt;
    initializer_range=1 gives sharp attention, so a wrong context changes the reply."""
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tied, eos_token_id=1, pad_token_id=1,
        initializer_range=initializer_range,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def text_tokenizer():
    return tiny_text_tokenizer()


def save_sound_adapter(
    folder: Path, llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, speech: SpeechTokenizer, output_rows: bool
) -> torch.nn.Module:
    """folder/base: `llm` as it is; folder/adapter: LoRA plus trained (random) sound-token rows, saved the way
    `auralm train pretrain` saves them (no whole embeddings, the tokenizer, sound_tokens.json). output_rows: the
    sound tokens' lm_head rows train too (untied models). Returns the peft model in memory."""
    llm.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    add_sound_tokens(llm, tokenizer, speech)
    sound_ids = tokenizer.convert_tokens_to_ids(sound_vocabulary(speech.config.vocab_size))
    rows = {"embed_tokens": sound_ids} | ({"lm_head": sound_ids} if output_rows else {})
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, trainable_token_indices=rows)
    lora = get_peft_model(llm, config)
    with torch.no_grad():  # trained sound rows: far from the mean rows the base gets when it grows
        for name, parameter in lora.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.normal_()
    lora.save_pretrained(folder / "adapter", save_embedding_layers=False)
    tokenizer.save_pretrained(folder / "adapter")
    sound = {HASH_KEY: speech.tokenizer_hash, CODES_KEY: speech.config.vocab_size}
    (folder / "adapter" / SOUND_TOKENS_FILE).write_text(json.dumps(sound))
    return lora
