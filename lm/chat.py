"""`SpeechChat`: conversations whose messages hold audio as well as text, answered by an LLM that hears.

    chat = SpeechChat(model, tokenizer, speech_tokenizer)
    chat.generate([{"role": "user", "content": [
        {"type": "audio", "path": "question.wav"},
        {"type": "text", "text": "Answer the question in the recording."},
    ]}])

Messages follow the transformers chat format. A content part `{"type": "audio", "path": …}` or
`{"type": "audio", "array": …, "sampling_rate": …}` becomes the speech tokenizer's token string;
parts are joined in order into the message text, then the model's own chat template applies.
`SpeechChat.from_pretrained(llm, checkpoint)` builds one from names; `reply` and `stream(...).reply` also say why a
reply ended and how many tokens it took; `replies` and `streams` answer many conversations in one batch, each with its
own limits (as `auralm serve` answers requests that wait together).

Limits hold before anything runs: a clip over `max_audio_seconds` (300 s by default, the server's) is an AudioError,
a prompt that leaves no room for `max_new_tokens` in the LLM's context (`max_position_embeddings`) a
ContextLengthError. A last user message whose audio is all silence (`auralm.tokenizer.audio.is_silent`) gets
NO_SPEECH_REPLY ("I couldn't hear any speech in that.", what the speech LLM is trained to say) without the LLM.
A clip in the last user turn longer than the speech tokenizer's window (what the speech LLM hears whole and learns
from) is answered window by window, cut at quiet points, each window a row of one batch, the replies joined in order:
a 60 s recording is transcribed, or answered, as six turns of 10 s rather than misheard whole.

A conversation that goes on where the last one stopped costs only its new tokens: the KV cache of the
last single-conversation generation is kept, and the next prompt reuses it up to the first token where
the two differ. One `SpeechChat` runs one generation at a time (the server holds a lock for that).

`static_cache=True` decodes into a fixed-size KV cache instead, which transformers compiles on a GPU into CUDA graphs
(torch.compile "reduce-overhead"): not carried between turns; SDPA attention (auralm's kernel reads every slot);
weights swapped in place for text-only turns, where the graphs recorded them.

A conversation without sound tokens is the base LLM's business: with an adapter loaded by `from_pretrained`
(or `load_llm(..., keep_base=True)`), it runs on the weights from before the adapter was merged
(`base_weights`), and sound tokens cannot be generated in it, so its replies are the base model's, token for
token. Sound tokens anywhere in its prompt (an audio part, or a token string sent as text) put the adapter to
work for the whole conversation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Generator, Sequence
from typing import Any

import torch
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer
from whisper.model import Whisper
from whisper.utils import compression_ratio

from auralm.checkpoints import shipped_model
from auralm.checkpoints.registry import SHIPPED_ADAPTER, names_shipped_tokenizer
from auralm.devices import resolve_device
from auralm.errors import AuralmError
from auralm.lm.attention import ATTENTION_NAME, register_attention
from auralm.lm.loading import base_weights, load_llm
from auralm.lm.messages import (
    ENCODED_CLIPS_KEPT,
    ClipStrings,
    Message,
    audio_parts,
    clip_audio,
    in_windows,
    last_turn_audio,
    with_audio_strings,
)
from auralm.lm.replies import UNHEARD, Reply, ReplyStream, StreamBatch, joined, row_replies, row_reply
from auralm.lm.streaming import BatchStreamer, RowLimits, after_heard, until_stop
from auralm.lm.vocabulary import (
    SpeechTokenizerMismatchError,
    add_sound_tokens,
    check_speech_tokenizer,
    sound_vocabulary,
)
from auralm.tokenizer import SpeechTokenizer
from auralm.tokenizer.audio import MAX_AUDIO_SECONDS, is_silent
from auralm.tokenizer.backbone import LOOPED_COMPRESSION_RATIO
from auralm.tokenizer.token_format import TRANSCRIBE_PROMPT

logger = logging.getLogger(__name__)
Row = tuple[Sequence[Message], int, Sequence[str]]  # one generation's row: conversation, max_new_tokens, stop strings
NO_REPEAT_WORDS = 4  # a transcription decoded again after a loop repeats no run of this many tokens


class ContextLengthError(AuralmError):
    """A prompt that leaves the LLM's context no room for the reply; the message gives both numbers."""


class SpeechChat:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        speech_tokenizer: SpeechTokenizer,
        allow_mismatch: bool = False,
        reuse_cache: bool = True,
        max_audio_seconds: float = MAX_AUDIO_SECONDS,
        static_cache: bool = False,
    ):
        check_speech_tokenizer(model, speech_tokenizer, allow_mismatch)
        if static_cache and model.config._attn_implementation == ATTENTION_NAME:
            raise ValueError(f"static_cache=True needs attention that reads a mask: sdpa, not {ATTENTION_NAME!r}")
        known = tokenizer.get_vocab()  # builds a dict each call: once
        missing = [t for t in sound_vocabulary(speech_tokenizer.config.vocab_size) if t not in known]
        if missing:
            raise SpeechTokenizerMismatchError(
                f"the LLM's tokenizer lacks {len(missing)} sound tokens; call add_sound_tokens first"
            )
        self.model, self.tokenizer, self.speech_tokenizer = model, tokenizer, speech_tokenizer
        self.reuse_cache, self.max_audio_seconds, self.static_cache = reuse_cache, max_audio_seconds, static_cache
        self._clips = ClipStrings(speech_tokenizer)
        self._silent: set[tuple] = set()  # the keys (ClipStrings') of clips found silent
        self._sound_ids = tokenizer.convert_tokens_to_ids(sound_vocabulary(speech_tokenizer.config.vocab_size))
        self._sound_id_tensor = torch.tensor(self._sound_ids)
        # The last single-conversation KV cache, its ids, and whether it was computed on the base weights.
        self._last_turn: tuple[Cache, list[int], bool] | None = None

    @classmethod
    def from_pretrained(
        cls,
        llm: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        whisper: str | os.PathLike | Whisper | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        allow_mismatch: bool = False,
        keep_base: bool = True,
        max_audio_seconds: float = MAX_AUDIO_SECONDS,
        static_cache: bool = False,
    ) -> SpeechChat:
        """A chat built from names: the speech tokenizer, then the LLM, given sound tokens if it lacks them.

        With nothing named, the speech models shipped with auralm: its speech tokenizer and SmolLM2-135M-Instruct
        with the adapter trained on its tokens. llm: a Hugging Face folder or .gguf file (None or "smollm2": the
        packaged SmolLM2-135M-Instruct, plain); adapter: a LoRA folder merged into it. checkpoint: the speech
        tokenizer ("default" or None: the shipped one, an auralm folder, an Ichigo or WhisperSpeech file); whisper:
        its backbone (default: the one the checkpoint names). device: None or "auto": CUDA when present, else CPU
        (`auralm.devices`).
        attn_implementation: None picks auralm's Triton flash attention on CUDA (SDPA with static_cache) and
        transformers' default elsewhere. An LLM without sound tokens gets them untrained, with a warning.
        keep_base: with an adapter, keep the weights it changed so that prompts without sound tokens get the base
        LLM's answers (a copy of those weights: about 0.4 GB for SmolLM2-135M in float32); False: the adapter's.
        max_audio_seconds: longer clips are refused. static_cache: decode into a fixed-size KV cache, compiled
        into CUDA graphs on a GPU (see the module's docstring).
        """
        if llm is None and adapter is None and names_shipped_tokenizer(checkpoint):  # "default" and None alike
            adapter = shipped_model(SHIPPED_ADAPTER)
        device = resolve_device(device)
        speech = SpeechTokenizer.from_pretrained(checkpoint, whisper=whisper, device=device)
        model, tokenizer = load_llm(llm, device=device, adapter=adapter, keep_base=keep_base)
        if attn_implementation is None and device.type == "cuda":
            attn_implementation = "sdpa" if static_cache else ATTENTION_NAME
        if attn_implementation == ATTENTION_NAME:
            register_attention()
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        if add_sound_tokens(model, tokenizer, speech):
            logger.warning("this LLM had no sound tokens; they were added untrained, so it cannot understand audio yet")
        return cls(model, tokenizer, speech, allow_mismatch=allow_mismatch, max_audio_seconds=max_audio_seconds,
                   static_cache=static_cache)  # fmt: skip

    def forget(self) -> None:
        """Drop what is kept between calls: the last turn's KV cache and the token strings of recent clips."""
        self._last_turn = None
        self._clips.clear()
        self._silent.clear()

    # ---- prompts ---------------------------------------------------------------------------

    def render(
        self, conversations: Sequence[Sequence[Message]], decoded: dict[int, torch.Tensor] | None = None
    ) -> list[list[dict[str, str]]]:
        """Every audio part replaced by its sound-token string. New clips are encoded in one batch; a
        clip seen lately is not encoded again (`ClipStrings`). decoded: clips already decoded, by id(part)."""
        parts, decoded = audio_parts(conversations), decoded or {}
        keys, strings = self._clips.known(parts)
        todo = [
            decoded[id(p)] if id(p) in decoded else clip_audio(p, self.max_audio_seconds)
            for p, string in zip(parts, strings, strict=True)
            if string is None
        ]
        codes = self.speech_tokenizer.encode(todo) if todo else []
        return with_audio_strings(conversations, self._clips.complete(keys, strings, codes))

    def unheard(self, messages: Sequence[Message], decoded: dict[int, torch.Tensor] | None = None) -> bool:
        """Whether the last message is the user's with audio, all of it silence (`is_silent`): such a turn gets
        NO_SPEECH_REPLY. decoded: where the clips decoded to tell are left for `render` (by id(part))."""
        parts = last_turn_audio(messages)
        keys, strings = self._clips.known(parts)
        for part, key, string in zip(parts, keys, strings, strict=True):
            if key in self._silent:
                continue
            if string is not None:  # encoded before, so heard before
                return False
            audio = clip_audio(part, self.max_audio_seconds)
            if decoded is not None:
                decoded[id(part)] = audio
            if not is_silent(audio):
                return False
            if key is not None:
                self._silent = set() if len(self._silent) >= ENCODED_CLIPS_KEPT else self._silent
                self._silent.add(key)
        return bool(parts)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of one conversation, ready for the assistant's turn."""
        (rendered,) = self.render([messages])
        return self.tokenizer.apply_chat_template(
            rendered, add_generation_prompt=True, tokenize=True, return_dict=False
        )

    # ---- generation ------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        conversations: Sequence[Message] | Sequence[Sequence[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
    ) -> str | list[str]:
        """The assistant's reply to one conversation, or to each of a list of them (`replies`).

        temperature 0 decodes greedily; stop strings end a reply and are not part of it.
        """
        if conversations and isinstance(conversations[0], dict):
            return self.reply(conversations, max_new_tokens, temperature, top_p, stop).text
        n = len(conversations)
        replies = self.replies(conversations, [max_new_tokens] * n, [stop] * n, temperature, top_p)
        return [reply.text for reply in replies]

    @torch.no_grad()
    def reply(
        self,
        messages: Sequence[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
    ) -> Reply:
        """`generate` for one conversation, with why the reply ended and its token counts (none for
        NO_SPEECH_REPLY, which takes no LLM)."""
        return self.replies([messages], [max_new_tokens], [stop], temperature, top_p)[0]

    @torch.no_grad()
    def replies(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: Sequence[int],
        stops: Sequence[Sequence[str]],
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> list[Reply]:
        """The Reply to each conversation, each with its own max_new_tokens and stop strings, generated together (how
        the server answers concurrent requests): one padded batch whose rows end on their own, those with sound
        tokens and those without being two, a long clip's windows rows of their own. Greedy, each reply is the one
        it gets alone. Every prompt is checked before anything is generated."""
        decoded: dict[int, torch.Tensor] = {}
        unheard, heard = self._heard(conversations, max_new_tokens, stops, decoded)
        made = iter(self._generate([row for rows in heard for row in rows], decoded, temperature, top_p))
        answers = iter([joined([next(made) for _ in rows]) for rows in heard])
        return [UNHEARD if u else next(answers) for u in unheard]

    def _heard(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: Sequence[int],
        stops: Sequence[Sequence[str]], decoded: dict,
    ) -> tuple[list[bool], list[list[Row]]]:  # fmt: skip
        """Which conversations are unheard (silence: UNHEARD without the LLM), and the rows of each heard one: its
        windows (one, or a long clip's), each with the conversation's max_new_tokens and stop strings."""
        unheard = [self.unheard(c, decoded) for c in conversations]
        heard = [
            [(window, most, stop) for window in self.in_windows(c, decoded)]
            for c, most, stop, u in zip(conversations, max_new_tokens, stops, unheard, strict=True)
            if not u
        ]
        return unheard, heard

    def _batches(self, rows: list[Row], decoded: dict) -> list[tuple[list[int], dict[str, torch.Tensor], RowLimits]]:
        """Rows as the batches they are generated in: (their indices, their prompts' ids and mask, their limits); those
        without sound tokens apart from those with (other weights). Every prompt is checked before any batch is made;
        clips' token strings are cached, so rendering a group again costs no encoding."""
        if not rows:
            return []
        everything = self._inputs([row[0] for row in rows], decoded, [row[1] for row in rows])
        with_sound = self._with_sound(everything["input_ids"]).tolist()
        if len(set(with_sound)) == 1:
            split = [(list(range(len(rows))), everything)]
        else:
            groups = ([i for i, h in enumerate(with_sound) if h == value] for value in (False, True))
            split = [(g, self._inputs([rows[i][0] for i in g], decoded, [rows[i][1] for i in g])) for g in groups]
        batches = []
        for group, inputs in split:
            most, stops = [rows[i][1] for i in group], [rows[i][2] for i in group]
            batches.append((group, inputs, RowLimits(self.tokenizer, inputs["input_ids"].shape[1], most, stops)))
        return batches

    def _generate(self, rows: list[Row], decoded: dict, temperature: float, top_p: float, **extra: Any) -> list[Reply]:
        """Replies to heard rows; `extra`: more of `model.generate`'s options."""
        replies = [UNHEARD] * len(rows)
        for group, inputs, limits in self._batches(rows, decoded):
            output = self._generate_ids(inputs, self._generation_options(limits, temperature, top_p) | extra)
            made = row_replies(self.tokenizer, inputs["attention_mask"], output, limits, self._eos())
            for i, reply in zip(group, made, strict=True):
                replies[i] = reply
        return replies

    def stream(
        self,
        messages: Sequence[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
    ) -> ReplyStream:
        """The reply to one conversation as pieces of text while it is generated; joined, they equal
        `generate` with the same options (greedy: exactly). Once they are all read, the stream's
        `reply` is what `reply` would have returned. The prompt is made (clips encoded, limits checked:
        their errors raise) here, the reply generated in a thread from here on; closing the stream ends the
        generation and waits for it."""
        batch = self.streams([messages], [max_new_tokens], [stop], temperature, top_p)
        worker = threading.Thread(target=batch.run, daemon=True)
        worker.start()
        return batch.streams[0].joining(worker)

    def streams(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: Sequence[int], stops: Sequence[Sequence[str]],
        temperature: float = 0.0, top_p: float = 1.0,
    ) -> StreamBatch:  # fmt: skip
        """`stream` for many conversations generated together, in the batches `replies` makes (how the server streams
        requests that wait together): each stream's pieces come as its rows are generated, and closing a stream ends
        its rows. Every prompt is made and checked here; `run()` of the result generates them all."""
        decoded: dict[int, torch.Tensor] = {}
        unheard, heard = self._heard(conversations, max_new_tokens, stops, decoded)
        rows = [row for rows in heard for row in rows]
        located: list[tuple[BatchStreamer, int, int]] = [None] * len(rows)  # (streamer, its row, prompt tokens)
        generations = []
        for group, inputs, limits in self._batches(rows, decoded):
            generations.append((inputs, limits, streamer := BatchStreamer(self.tokenizer, limits, self._eos())))
            prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(group):
                located[i] = (streamer, row, prompt_tokens[row])
        failure: list[Exception] = []

        def run() -> None:
            try:
                for inputs, limits, streamer in generations:
                    options = self._generation_options(limits, temperature, top_p, every_step=True)
                    self._generate_ids(inputs, options | {"streamer": streamer})
            except Exception as e:  # the streams raise it
                failure.append(e)
            finally:
                for _, _, streamer in generations:
                    streamer.end()

        spans = iter(located)
        streams = iter([self._pieces([next(spans) for _ in rows], failure) for rows in heard])
        return StreamBatch([ReplyStream.known(UNHEARD) if u else next(streams) for u in unheard], run)

    def _pieces(self, spans: list[tuple[BatchStreamer, int, int]], failure: list) -> ReplyStream:
        """One conversation's stream: the pieces of its rows (one, or a long clip's windows) one after the other;
        closing it, read or not, ends its rows (a client that hung up)."""

        def pieces() -> Generator[str, None, Reply]:
            replies = []
            for number, (streamer, row, prompt_tokens) in enumerate(spans):
                if number:
                    yield " "
                yield from until_stop(after_heard(streamer.rows[row]), streamer.limits.stops[row])
                if failure:
                    raise failure[0]
                replies.append(row_reply(self.tokenizer, prompt_tokens, streamer.ids[row], streamer.limits, row,
                                         streamer.eos))  # fmt: skip
            return joined(replies)

        def end_rows() -> None:
            for streamer, row, _ in spans:
                streamer.limits.cancelled.add(row)

        return ReplyStream(pieces(), on_close=end_rows)

    def transcribe(
        self, audio: Any, prompt: str = TRANSCRIBE_PROMPT, max_new_tokens: int = 256, request_first: bool = False
    ) -> str:
        """What the LLM hears in a clip, asked with `prompt` after the clip (before it with request_first; a long
        clip window by window); "" for a silent clip. Whisper's guard against loops: a window whose text compresses
        over LOOPED_COMPRESSION_RATIO (gzip) is decoded again, greedy still, never repeating NO_REPEAT_WORDS tokens
        in a row, so it costs its own words."""
        part = audio if isinstance(audio, dict) else {"type": "audio", "path": audio}
        parts = [part, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": parts[::-1] if request_first else parts}]
        decoded: dict[int, torch.Tensor] = {}
        if self.unheard(messages, decoded):
            return ""
        rows = [(window, max_new_tokens, ()) for window in self.in_windows(messages, decoded)]
        texts = [reply.text for reply in self._generate(rows, decoded, 0.0, 1.0)]
        if looped := [i for i, text in enumerate(texts) if compression_ratio(text) > LOOPED_COMPRESSION_RATIO]:
            again = self._generate([rows[i] for i in looped], decoded, 0.0, 1.0, no_repeat_ngram_size=NO_REPEAT_WORDS)
            for i, reply in zip(looped, again, strict=True):
                texts[i] = reply.text
        return " ".join(texts)

    def in_windows(self, messages: Sequence[Message], decoded: dict[int, torch.Tensor]) -> list[list[Message]]:
        """`in_windows` of lm/messages.py with this chat's speech tokenizer and audio limit."""
        return in_windows(messages, decoded, self.speech_tokenizer, self.max_audio_seconds)

    # ---- helpers ---------------------------------------------------------------------------

    def _eos(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return {eos} if isinstance(eos, int) else set(eos or ())

    def _generate_ids(self, inputs: dict[str, torch.Tensor], options: dict[str, Any]) -> torch.Tensor:
        """`model.generate`'s sequences [B, prompt + new]; a single conversation starts from, and leaves
        behind, the cache of the turn before. Prompts without sound tokens are answered by the base weights
        (when kept), with sound tokens suppressed."""
        text_only = not self._with_sound(inputs["input_ids"]).any()
        if text_only:
            options = options | {"suppress_tokens": self._sound_ids}
        with base_weights(self.model, in_place=self.static_cache) if text_only else contextlib.nullcontext():
            if self.static_cache:
                return self.model.generate(**inputs, **options, cache_implementation="static")
            if not self.reuse_cache or inputs["input_ids"].shape[0] != 1:
                return self.model.generate(**inputs, **options)
            prompt = inputs["input_ids"][0].tolist()
            cache = self._reusable_cache(prompt, text_only)
            output = self.model.generate(**inputs, **options, past_key_values=cache, return_dict_in_generate=True)
        cache = output.past_key_values
        if all(type(layer) is DynamicLayer for layer in cache.layers):  # sliding windows forget: not reusable
            self._last_turn = cache, output.sequences[0, : cache.get_seq_length()].tolist(), text_only
        return output.sequences

    def _reusable_cache(self, prompt: list[int], text_only: bool) -> Cache | None:
        """The last turn's cache cut to the prefix it shares with `prompt`, leaving at least the last
        prompt token to compute (generation needs its logits); None when nothing is shared, or when it was
        computed on the other weights."""
        if self._last_turn is None:
            return None
        (cache, ids, cached_text_only), self._last_turn = self._last_turn, None  # generation mutates it
        keep = min(_shared_prefix_length(ids, prompt), len(prompt) - 1)
        if keep == 0 or cached_text_only != text_only:
            return None
        if keep < cache.get_seq_length():
            cache.crop(keep - cache.get_seq_length())  # a negative count removes tokens, in every transformers 5
        return cache

    def _with_sound(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) → (B,) bool: which prompts hold sound tokens."""
        return torch.isin(input_ids, self._sound_id_tensor.to(input_ids.device)).any(dim=1)

    def _inputs(
        self, conversations: list[Sequence[Message]], decoded: dict[int, torch.Tensor], max_new_tokens: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """The prompts' ids and mask, left-padded; a prompt that leaves no room for its max_new_tokens in the LLM's
        context (its max_position_embeddings) is a ContextLengthError, before anything is generated."""
        texts = [
            self.tokenizer.apply_chat_template(r, add_generation_prompt=True, tokenize=False)
            for r in self.render(conversations, decoded)
        ]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        context = getattr(self.model.config, "max_position_embeddings", None)
        for prompt_tokens, most in zip(inputs["attention_mask"].sum(dim=1).tolist(), max_new_tokens, strict=True):
            if isinstance(context, int) and prompt_tokens + most > context:
                raise ContextLengthError(
                    f"the prompt is {prompt_tokens:,} tokens, over the {max(context - most, 0):,} this LLM takes with "
                    f"{most:,} new tokens (its context: {context:,}); use shorter audio, fewer turns or fewer new tokens"
                )
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def _generation_options(
        self, limits: RowLimits, temperature: float, top_p: float, every_step: bool = False
    ) -> dict:
        """model.generate's options for a batch that `limits` ends row by row: left to generate's own max_new_tokens
        when every row shares it and has no stop strings (one check less on each token), unless every_step (a
        stream, whose reader may leave)."""
        options: dict[str, Any] = {"max_new_tokens": max(limits.max_new_tokens)}
        options["pad_token_id"] = self.tokenizer.pad_token_id
        if temperature > 0:
            options |= {"do_sample": True, "temperature": temperature, "top_p": top_p}
        else:
            options |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if every_step or any(limits.stops) or len(set(limits.max_new_tokens)) > 1:
            options["stopping_criteria"] = StoppingCriteriaList([limits])
        return options


def _shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
