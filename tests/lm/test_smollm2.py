"""The real default LLM (SmolLM2-135M-Instruct, Q4_1 GGUF) extended with sound tokens, answering
a question with an audio part in the conversation."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from auralm.checkpoints import CheckpointError, load_whisper
from auralm.lm import SpeechChat, add_sound_tokens, load_llm
from auralm.tokenizer import SpeechTokenizer, TokenizerConfig
from tests.conftest import DATA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chat():
    model, tokenizer = load_llm()  # the packaged default; converted once into ~/.cache/auralm
    torch.manual_seed(0)  # a random bottleneck on the real tiny.en backbone: untrained, real shapes
    speech = SpeechTokenizer(
        TokenizerConfig(whisper="tiny.en", n_state=384, n_head=6, n_codes=512), load_whisper("tiny.en")
    )
    add_sound_tokens(model, tokenizer, speech)
    return SpeechChat(model, tokenizer, speech)


def test_answers_a_text_question_with_audio_in_the_conversation(chat):
    # The bottleneck is untrained, so its tokens are noise to this model: the question comes first.
    conversation = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is the capital of France?"},
            {"type": "audio", "path": DATA / "en_8k.wav"},
        ]},
    ]  # fmt: skip
    limit = 48
    reply = chat.generate(conversation, max_new_tokens=limit)
    assert "Paris" in reply, reply
    assert len(chat.tokenizer(reply)["input_ids"]) < limit  # it ended by itself, not at the limit
    assert "".join(chat.stream(conversation, max_new_tokens=limit)) == reply


def test_the_extended_model_saves_for_plain_transformers(chat, tmp_path):
    chat.model.save_pretrained(tmp_path)
    chat.tokenizer.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.sound_tokenizer_hash == chat.speech_tokenizer.tokenizer_hash
    assert tokenizer.convert_tokens_to_ids("<|sound_0000|>") == tokenizer.convert_tokens_to_ids("<|sound_start|>") + 2
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="not a Hugging Face model folder"):
        load_llm(tmp_path)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(CheckpointError, match="not a GGUF model"):
        load_llm(bad)
