"""Sound tokens in a tiny random Llama, the tokenizer-hash pin, and SpeechChat's generation paths."""

import logging
import threading

import pytest
import torch
from transformers import AutoTokenizer

from auralm.lm import (
    SpeechChat,
    SpeechTokenizerMismatchError,
    add_sound_tokens,
    check_speech_tokenizer,
    tokens_to_prompt,
)
from auralm.lm.loading import llm_folder
from auralm.lm.replies import Reply
from auralm.lm.streaming import TokenStreamer
from auralm.tokenizer import load_audio
from tests.conftest import DATA, TINY_CONFIG
from tests.lm.conftest import WORDS, tiny_llama, tiny_text_tokenizer

V = TINY_CONFIG.vocab_size  # sound tokens: the 64 speech codes and the mask code


@pytest.mark.parametrize("tied", [True, False])
def test_sound_tokens_get_ichigos_ids_and_old_rows_stay_bit_identical(tied, tiny_tokenizer):
    model, text = tiny_llama(tied), tiny_text_tokenizer()
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    assert add_sound_tokens(model, text, tiny_tokenizer) == V + 2
    n = len(WORDS)  # the sound tokens come right after the existing vocabulary
    assert text.convert_tokens_to_ids(["<|sound_start|>", "<|sound_end|>", "<|sound_0000|>", "<|sound_0064|>"]) == [
        n,
        n + 1,
        n + 2,
        n + 2 + 64,
    ]
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == n + V + 2
    assert torch.equal(new_in[:n], old_in) and torch.equal(new_out[:n], old_out)
    torch.testing.assert_close(new_in[n:], old_in.mean(0).expand(V + 2, -1))
    torch.testing.assert_close(new_out[n:], old_out.mean(0).expand(V + 2, -1))
    assert (new_in.data_ptr() == new_out.data_ptr()) == tied


def test_token_strings_round_trip_through_the_extended_tokenizer(tiny_tokenizer):
    model, text = tiny_llama(True), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    codes = tiny_tokenizer.encode(DATA / "en_8k.wav")
    string = tiny_tokenizer.to_string(codes)
    ids = text(string, add_special_tokens=False)["input_ids"]
    start = len(WORDS)
    assert ids == [start, *(start + 2 + c for c in codes.tolist()), start + 1]
    tokens = "".join(text.convert_ids_to_tokens(ids))  # the test tokenizer decodes words with spaces between
    assert tokens == string
    assert torch.equal(tiny_tokenizer.from_string(tokens), codes)


@torch.no_grad()
def test_text_only_logits_unchanged_by_the_extension(tiny_tokenizer):
    model, text = tiny_llama(False), tiny_text_tokenizer()
    ids = text("hello what is the cat ?", return_tensors="pt")["input_ids"]
    before = model(ids).logits
    add_sound_tokens(model, text, tiny_tokenizer)
    after = model(ids).logits
    # The same values up to float rounding: a wider output matmul may block its sums differently.
    torch.testing.assert_close(after[..., : before.shape[-1]], before, atol=1e-6, rtol=0)
    assert torch.equal(after.argmax(-1), before.argmax(-1))


def test_an_extended_model_is_reused_and_its_hash_pins_the_speech_tokenizer(tiny_tokenizer):
    model, text = tiny_llama(True), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    size = model.get_input_embeddings().weight.shape[0]
    assert add_sound_tokens(model, text, tiny_tokenizer) == 0  # already there: reused
    assert model.get_input_embeddings().weight.shape[0] == size
    assert model.config.sound_tokenizer_hash == tiny_tokenizer.tokenizer_hash and model.config.sound_codes == V
    check_speech_tokenizer(model, tiny_tokenizer)
    with torch.no_grad():
        tiny_tokenizer.bottleneck.mlp[0].bias += 0.1  # another tokenizer now
    with pytest.raises(SpeechTokenizerMismatchError, match="trained on sound tokens of speech tokenizer"):
        check_speech_tokenizer(model, tiny_tokenizer)
    with pytest.raises(SpeechTokenizerMismatchError):
        SpeechChat(model, text, tiny_tokenizer)
    assert add_sound_tokens(model, text, tiny_tokenizer) == 0  # what from_pretrained calls: the pin stays
    with pytest.raises(SpeechTokenizerMismatchError):
        check_speech_tokenizer(model, tiny_tokenizer)
    check_speech_tokenizer(model, tiny_tokenizer, allow_mismatch=True)


def test_a_codebook_of_another_size_is_refused(tiny_tokenizer):
    model, text = tiny_llama(True), tiny_text_tokenizer()
    text.add_tokens(["<|sound_start|>", "<|sound_end|>", "<|sound_0000|>"], special_tokens=True)
    with pytest.raises(SpeechTokenizerMismatchError, match="different codebook"):
        add_sound_tokens(model, text, tiny_tokenizer)


@pytest.fixture
def chat(tiny_tokenizer):
    model, text = tiny_llama(False), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    return SpeechChat(model, text, tiny_tokenizer)


def conversation(clip: str, question: str = "what is this sound ?"):
    return [{"role": "user", "content": [{"type": "audio", "path": DATA / clip}, {"type": "text", "text": question}]}]


def test_audio_parts_become_token_strings_in_the_prompt(chat, tiny_tokenizer):
    (rendered,) = chat.render([conversation("en_8k.wav")])
    expected = tiny_tokenizer.to_string(tiny_tokenizer.encode(DATA / "en_8k.wav"))
    assert rendered == [{"role": "user", "content": f"{expected}\nwhat is this sound ?"}]
    audio = load_audio(DATA / "en_8k.wav")
    array_part = [{"role": "user", "content": [{"type": "audio", "array": audio.numpy(), "sampling_rate": 16000}]}]
    assert chat.render([array_part])[0][0]["content"] == expected
    ids = chat.prompt_ids(conversation("en_8k.wav"))
    assert ids.count(chat.tokenizer.convert_tokens_to_ids("<|sound_start|>")) == 1


def test_streaming_equals_generate_and_batched_equals_single(chat):
    first, second = conversation("en_8k.wav"), conversation("en_16k.wav", "hello")
    single = [chat.generate(first, max_new_tokens=12), chat.generate(second, max_new_tokens=12)]
    assert chat.generate([first, second], max_new_tokens=12) == single
    pieces = list(chat.stream(first, max_new_tokens=12))
    assert "".join(pieces) == single[0] and len(pieces) > 1


def test_replies_in_one_batch_end_each_on_its_own_limits_as_alone(chat):
    chat.model.generation_config.eos_token_id = None  # only a row's own limits end it
    spoken, other, typed = (
        conversation("en_8k.wav"),
        conversation("en_16k.wav", "hello"),
        [{"role": "user", "content": "hello"}],
    )
    stop = chat.reply(spoken, max_new_tokens=10).text.split()[2]
    requests = [(spoken, 10, [stop]), (other, 4, []), (spoken, 7, []), (typed, 5, []), (other, 9, [])]
    alone = [chat.reply(messages, max_new_tokens=most, stop=stops) for messages, most, stops in requests]
    assert [reply.finish_reason for reply in alone] == ["stop", "length", "length", "length", "length"]
    assert [reply.completion_tokens for reply in alone][1:] == [4, 7, 5, 9] and alone[0].completion_tokens < 10
    assert chat.replies(*zip(*requests, strict=True)) == alone

    batch = chat.streams(*zip(*requests, strict=True))
    worker = threading.Thread(target=batch.run)
    worker.start()
    assert ["".join(stream) for stream in batch.streams] == [reply.text for reply in alone]
    worker.join()
    assert [stream.reply for stream in batch.streams] == alone


def test_a_stream_closed_early_ends_its_rows_and_no_other(chat):
    chat.model.generation_config.eos_token_id = None  # only max_new_tokens or the reader can end a row
    forwards = record_prefills(chat.model)
    other = conversation("en_16k.wav", "hello")
    batch = chat.streams([conversation("en_8k.wav"), other], [400, 6], [(), ()])
    worker = threading.Thread(target=batch.run)
    worker.start()
    batch.streams[0].close()  # unread: its reader left before the first piece
    text = "".join(batch.streams[1])
    worker.join()  # the generation ended: its only other row has its 6 tokens
    assert len(forwards) < 100 and batch.streams[1].reply.completion_tokens == 6
    assert text == chat.reply(other, max_new_tokens=6).text


def test_the_stream_sends_each_token_once_its_characters_are_whole():
    # SmolLM2's byte-level tokenizer (the default LLM's) splits a parrot emoji into byte tokens
    tokenizer = AutoTokenizer.from_pretrained(llm_folder())
    text = "RogRogRog🦜, then a word."
    ids = tokenizer.encode(text, add_special_tokens=False)
    streamer = TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    streamer.put(torch.tensor([ids[:2]]))  # the prompt: not sent
    held = 0
    for count in range(1, len(ids) + 1):
        streamer.put(torch.tensor([ids[count - 1]]))
        sent = "".join(streamer.text_queue.get_nowait() for _ in range(streamer.text_queue.qsize()))
        so_far = tokenizer.decode(ids[:count])
        if so_far.endswith("\ufffd"):  # half a character: held back
            held += 1
            assert sent == ""
        else:  # everything up to this token, with no space needed
            assert sent and so_far.endswith(sent)
    assert held > 0
    streamer.end()
    assert streamer.text_queue.get_nowait() == ""  # end() sends nothing more
    assert tokenizer.decode(ids) == text


def test_stop_strings_end_the_reply_in_both_paths(chat):
    reply = chat.generate(conversation("en_8k.wav"), max_new_tokens=12)
    words = reply.split()
    assert len(words) > 3
    stop = words[2]
    expected = reply[: reply.find(stop)]
    assert chat.generate(conversation("en_8k.wav"), max_new_tokens=12, stop=[stop]) == expected
    assert "".join(chat.stream(conversation("en_8k.wav"), max_new_tokens=12, stop=[stop])) == expected


def test_tokens_to_prompt_is_what_the_chat_feeds_the_model(chat, tiny_tokenizer):
    codes = tiny_tokenizer.encode(DATA / "en_8k.wav")
    message = tokens_to_prompt(codes, "what is this sound ?")
    assert message == tiny_tokenizer.to_string(codes) + "\nwhat is this sound ?"
    assert tiny_tokenizer.from_string(message.split("\n")[0]).tolist() == codes.tolist()
    (rendered,) = chat.render([conversation("en_8k.wav")])
    expected = chat.tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
    assert tokens_to_prompt(codes, "what is this sound ?", chat.tokenizer) == expected
    with_system = tokens_to_prompt(codes, tokenizer=chat.tokenizer, system="hello")
    assert with_system.startswith("<|system|> hello <eos>") and with_system.endswith("<|assistant|>")


def test_chat_needs_the_sound_tokens(tiny_tokenizer):
    with pytest.raises(SpeechTokenizerMismatchError, match="add_sound_tokens first"):
        SpeechChat(tiny_llama(True), tiny_text_tokenizer(), tiny_tokenizer)


def test_a_lora_adapter_loads_on_top(tmp_path):
    from peft import LoraConfig, get_peft_model

    from auralm.checkpoints import CheckpointError
    from auralm.lm import load_llm

    base = tiny_llama(False)
    base.save_pretrained(tmp_path / "base")
    tiny_text_tokenizer().save_pretrained(tmp_path / "base")
    lora = get_peft_model(
        tiny_llama(False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        expected = lora(ids).logits
        model, _ = load_llm(tmp_path / "base", adapter=tmp_path / "adapter")
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base(ids).logits, expected)
    with pytest.raises(CheckpointError, match="not an adapter folder"):
        load_llm(tmp_path / "base", adapter=tmp_path)


@pytest.mark.parametrize(
    ("static_cache", "device"),
    [(False, "cpu"), (True, "cpu"), pytest.param(True, "cuda", marks=pytest.mark.gpu)],
    ids=["dynamic-cache", "static-cache", "cuda-graphs"],
)
def test_conversations_without_sound_tokens_are_answered_by_the_base_weights(
    tmp_path, tiny_tokenizer, static_cache, device
):
    """With a static cache too, which a GPU compiles into CUDA graphs: the same replies as the dynamic cache (the
    weights swapped in place, where the graphs read them)."""
    from peft import LoraConfig, get_peft_model

    from auralm.lm import load_llm
    from auralm.lm.loading import base_weights, has_base_weights

    base, text = tiny_llama(True, initializer_range=1.0), tiny_text_tokenizer()
    add_sound_tokens(base, text, tiny_tokenizer)
    base.save_pretrained(tmp_path / "base")
    text.save_pretrained(tmp_path / "base")
    lora_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, lora_config).save_pretrained(tmp_path / "adapter")
    folders = {"source": tmp_path / "base", "adapter": tmp_path / "adapter"}
    chat = SpeechChat(*load_llm(**folders, device=device, keep_base=True), tiny_tokenizer, static_cache=static_cache)
    caches, generate = [], chat.model.generate
    chat.model.generate = lambda *a, **k: caches.append(k.get("cache_implementation")) or generate(*a, **k)
    always = SpeechChat(*load_llm(**folders, device=device), tiny_tokenizer)  # the adapter merged, nothing kept
    plain = SpeechChat(*load_llm(tmp_path / "base", device=device), tiny_tokenizer)
    assert has_base_weights(chat.model) and not has_base_weights(always.model)

    typed = [{"role": "user", "content": "hello what is this"}]
    spoken = conversation("en_8k.wav")
    assert always.generate(typed, max_new_tokens=12) != plain.generate(typed, max_new_tokens=12)  # the adapter shows
    assert chat.generate(typed, max_new_tokens=12) == plain.generate(typed, max_new_tokens=12)
    assert chat.generate(spoken, max_new_tokens=12) == always.generate(spoken, max_new_tokens=12)
    as_text = [{"role": "user", "content": tiny_tokenizer.to_string(tiny_tokenizer.encode(DATA / "en_8k.wav"))}]
    assert chat.generate(as_text, max_new_tokens=12) == always.generate(as_text, max_new_tokens=12)  # sound too
    assert chat.generate(as_text, max_new_tokens=12) != plain.generate(as_text, max_new_tokens=12)
    assert chat.generate([spoken, typed], max_new_tokens=12) == [
        always.generate(spoken, max_new_tokens=12),
        plain.generate(typed, max_new_tokens=12),
    ]
    assert "".join(chat.stream(typed, max_new_tokens=12)) == plain.generate(typed, max_new_tokens=12)

    # A follow-up with audio cannot reuse the cache the base weights computed, nor the other way round.
    reply = chat.generate(typed, max_new_tokens=6)
    with_audio = [*typed, {"role": "assistant", "content": reply}, *spoken]
    assert chat.generate(with_audio, max_new_tokens=12) == always.generate(with_audio, max_new_tokens=12)
    assert chat.generate(typed, max_new_tokens=12) == plain.generate(typed, max_new_tokens=12)

    ids = torch.tensor([[4, 5, 6, 7]], device=device)
    with torch.no_grad():
        with base_weights(chat.model, in_place=static_cache):
            assert torch.equal(chat.model(ids).logits, plain.model(ids).logits)  # exactly the base model
        assert torch.equal(chat.model(ids).logits, always.model(ids).logits)  # and the merged weights are back
    assert set(caches) == {"static" if static_cache else None}


def test_audio_is_encoded_once_across_turns(chat, monkeypatch):
    calls = []
    encode = chat.speech_tokenizer.encode
    monkeypatch.setattr(chat.speech_tokenizer, "encode", lambda clips: calls.append(len(clips)) or encode(clips))
    array = {"type": "audio", "array": load_audio(DATA / "en_16k.wav").numpy(), "sampling_rate": 16000}
    turn_one = [{"role": "user", "content": [{"type": "audio", "path": DATA / "en_8k.wav"}, array]}]
    first = chat.render([turn_one])
    resent = {**array, "array": array["array"].copy()}  # a client sending the whole history again
    other = {**array, "array": array["array"][::-1].copy()}
    turn_two = [
        {"role": "user", "content": [{"type": "audio", "path": DATA / "en_8k.wav"}, resent]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": [other, {"type": "audio", "path": DATA / "en_fast_24k.ogg"}]},
    ]
    second = chat.render([turn_two])
    assert calls == [2, 2]  # the second turn encoded only its two new clips
    assert second[0][0] == first[0][0]
    assert second[0][2]["content"].split("\n")[1] == chat.speech_tokenizer.to_string(encode(DATA / "en_fast_24k.ogg"))


def record_prefills(model) -> list[int]:
    """Token counts of the model's forward passes, in order (the first of a generation is its prefill)."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    return seen


def test_a_follow_up_turn_reuses_the_kv_cache_and_answers_the_same(tiny_tokenizer):
    model, text = tiny_llama(False, initializer_range=1.0), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    chat, fresh = (SpeechChat(model, text, tiny_tokenizer, reuse_cache=reuse) for reuse in (True, False))
    first = conversation("en_8k.wav")
    reply = chat.generate(first, max_new_tokens=8)
    follow_up = [*first, {"role": "assistant", "content": reply}, *conversation("en_16k.wav", "hello")]
    edited = [*conversation("en_8k.wav", "hello"), *follow_up[1:]]  # the first question changed
    expected = [fresh.generate(c, max_new_tokens=8) for c in (follow_up, edited)]
    assert expected[0] != expected[1]  # the model listens to its context, so a stale cache would show
    prefills = record_prefills(chat.model)

    assert chat.generate(follow_up, max_new_tokens=8) == expected[0]
    new_tokens = len(chat.prompt_ids(follow_up)) - len(chat.prompt_ids(first))
    assert 0 < prefills[0] <= new_tokens  # the whole first turn came from the cache
    del prefills[:]
    assert "".join(chat.stream(edited, max_new_tokens=8)) == expected[1]  # cut back to the shared prefix
    assert len(chat.prompt_ids(first)) < prefills[0] < len(chat.prompt_ids(edited))
    chat.forget()
    del prefills[:]
    assert chat.generate(edited, max_new_tokens=8) == expected[1]
    assert prefills[0] == len(chat.prompt_ids(edited))  # nothing kept: the whole prompt again


def test_closing_a_stream_early_ends_its_generation(chat):
    chat.model.generation_config.eos_token_id = None  # only max_new_tokens or the reader can end it
    forwards = record_prefills(chat.model)
    pieces = chat.stream(conversation("en_8k.wav"), max_new_tokens=400)
    next(pieces)
    pieces.close()
    assert len(forwards) < 100
    assert len(chat.generate(conversation("en_8k.wav"), max_new_tokens=8)) > 0  # the chat goes on working


def test_a_reply_says_why_it_ended_and_counts_its_tokens(chat):
    messages = conversation("en_8k.wav")
    prompt = chat.prompt_ids(messages)
    chat.model.generation_config.eos_token_id = None  # only max_new_tokens ends a reply
    with torch.no_grad():
        output = chat.model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=1)
    new = output[0, len(prompt) :].tolist()
    text = chat.tokenizer.decode(new, skip_special_tokens=True)
    assert chat.reply(messages, max_new_tokens=6) == Reply(text, "length", len(prompt), 6)

    chat.model.generation_config.eos_token_id = new[2]  # now the model ends its reply with its third token
    ended = chat.reply(messages, max_new_tokens=6)
    assert ended.finish_reason == "stop" and ended.completion_tokens == new.index(new[2]) + 1
    assert chat.generate(messages, max_new_tokens=6) == ended.text
    stream = chat.stream(messages, max_new_tokens=6)
    assert stream.reply is None
    assert "".join(stream) == ended.text and stream.reply == ended


def test_from_pretrained_builds_the_chat_from_folders(tmp_path, tiny_tokenizer, tiny_whisper, caplog):
    tiny_llama(False).save_pretrained(tmp_path / "llm")
    tiny_text_tokenizer().save_pretrained(tmp_path / "llm")
    tiny_tokenizer.save_pretrained(tmp_path / "speech")  # its Whisper is random: passed, not named
    with caplog.at_level(logging.WARNING, logger="auralm"):
        chat = SpeechChat.from_pretrained(tmp_path / "llm", tmp_path / "speech", whisper=tiny_whisper)
    assert "this LLM had no sound tokens" in caplog.text
    assert chat.model.device.type == "cpu" and chat.model.config._attn_implementation == "sdpa"
    assert chat.speech_tokenizer.tokenizer_hash == tiny_tokenizer.tokenizer_hash

    model, text = tiny_llama(False), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    expected = SpeechChat(model, text, tiny_tokenizer).generate(conversation("en_8k.wav"), max_new_tokens=8)
    assert chat.generate(conversation("en_8k.wav"), max_new_tokens=8) == expected

    flash = SpeechChat.from_pretrained(
        tmp_path / "llm", tmp_path / "speech", whisper=tiny_whisper, attn_implementation="auralm"
    )
    assert flash.model.config._attn_implementation == "auralm"
    assert flash.generate(conversation("en_8k.wav"), max_new_tokens=8) == expected


def test_a_static_cache_is_refused_with_attention_that_reads_every_cached_slot(tiny_tokenizer):
    from auralm.lm.attention import ATTENTION_NAME, register_attention

    model, text = tiny_llama(True), tiny_text_tokenizer()
    add_sound_tokens(model, text, tiny_tokenizer)
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    with pytest.raises(ValueError, match="static_cache=True needs attention that reads a mask"):
        SpeechChat(model, text, tiny_tokenizer, static_cache=True)
    assert SpeechChat(model, text, tiny_tokenizer).static_cache is False
