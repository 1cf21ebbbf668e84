"""Messages with audio in them, as text: each audio part (a file, bytes or an array) becomes its clip's
sound-token string, and a message's parts are joined into its content.

`SpeechChat.render` does this for the built-in chat; the upstream front end (`auralm serve --upstream`) does the
same with its own batching, so both send a model the very same text. `ClipStrings` keeps the strings of recent
clips, so a clip is encoded once however often a conversation resends it.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from auralm.tokenizer import SAMPLE_RATE, AudioError, SpeechTokenizer, codes_to_string, load_audio
from auralm.tokenizer.audio import check_seconds, is_loaded_audio, is_silent

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]
ENCODED_CLIPS_KEPT = 256  # token strings of recent clips kept for later turns (about 10 KB each)


class ClipStrings:
    """Sound-token strings of recent clips, so a clip seen lately (the same file, bytes or array) is not
    encoded again: each turn of a conversation, even one whose client resends the whole history, costs
    only its new audio. The encoding itself is the caller's (`SpeechChat.render`; the upstream server
    batches concurrent requests):

        keys, strings, todo = clips.lookup(parts)  # strings: None where unknown; todo: those clips' audio
        strings = clips.complete(keys, strings, speech_tokenizer.encode(todo))
    """

    def __init__(self, speech_tokenizer: SpeechTokenizer, kept: int = ENCODED_CLIPS_KEPT):
        self.speech_tokenizer, self.kept = speech_tokenizer, kept
        self._strings: OrderedDict[tuple, str] = OrderedDict()  # by _audio_key, most recently used last

    def lookup(self, parts: Sequence[Message]) -> tuple[list[tuple | None], list[str | None], list[Any]]:
        """Each audio part's key, its string when known (else None), and the audio of the unknown ones."""
        keys, strings = self.known(parts)
        return keys, strings, [_audio_source(part) for part, s in zip(parts, strings, strict=True) if s is None]

    def known(self, parts: Sequence[Message]) -> tuple[list[tuple | None], list[str | None]]:
        """`lookup` without the audio: each part's key, and its string when known (else None)."""
        keys = [_audio_key(part) for part in parts]
        return keys, [self._strings.get(key) if key is not None else None for key in keys]

    def complete(
        self, keys: Sequence[tuple | None], strings: Sequence[str | None], codes: Sequence[torch.Tensor]
    ) -> list[str]:
        """`strings` with each None made from the next clip's codes (T,); all kept, the oldest beyond `kept` dropped."""
        if len(codes) != sum(s is None for s in strings):
            raise ValueError(f"{len(codes)} clips' codes for {sum(s is None for s in strings)} unknown clips")
        new = iter(codes)
        strings = [self.speech_tokenizer.to_string(next(new)) if s is None else s for s in strings]
        for key, string in zip(keys, strings, strict=True):
            if key is not None:
                self._strings[key] = string
                self._strings.move_to_end(key)
        while len(self._strings) > self.kept:
            self._strings.popitem(last=False)
        return strings

    def clear(self) -> None:
        self._strings.clear()


def audio_parts(conversations: Sequence[Sequence[Message]]) -> list[Message]:
    """Every audio part of the conversations, in order."""
    return [part for messages in conversations for m in messages for part in _parts(m) if _is_audio(part)]


def with_audio_strings(conversations: Sequence[Sequence[Message]], strings: Sequence[str]) -> list[list[dict]]:
    """The conversations as text: the audio parts replaced, in order, by `strings` (their sound-token
    strings), each message's parts joined into its content."""
    token_strings = iter(strings)
    rendered = []
    for messages in conversations:
        rendered.append([])
        for message in messages:
            pieces = [next(token_strings) if _is_audio(p) else _text(p) for p in _parts(message)]
            rendered[-1].append({"role": message["role"], "content": message_text(pieces)})
    return rendered


def message_text(pieces: Sequence[str]) -> str:
    """A message's parts (sound-token strings, text) joined into its content."""
    return "\n".join(pieces)


def clip_audio(part: Message, max_seconds: float) -> torch.Tensor:
    """An audio part's clip as the speech tokenizer takes it, float32 16 kHz (samples,): a file (or its bytes)
    decoded, an array at another rate resampled, a decoded 16 kHz clip as it is. Audio over max_seconds is refused
    (AudioError), a file before it is decoded."""
    if "path" in part:
        return load_audio(part["path"], max_seconds=max_seconds)
    if "array" not in part:
        raise ValueError("an audio part needs 'path' (a file, or its bytes), or 'array' with 'sampling_rate'")
    array, rate = part["array"], part.get("sampling_rate", SAMPLE_RATE)
    if is_loaded_audio(array, rate):  # a server's decoded upload: nothing to copy
        check_seconds(len(array) / SAMPLE_RATE, max_seconds, f"<array {tuple(array.shape)}>")
        return array
    return load_audio(array, rate, max_seconds=max_seconds)


def last_turn_audio(messages: Sequence[Message]) -> list[Message]:
    """The audio parts of the last message when it is the user's (the turn to answer)."""
    last = messages[-1] if messages else {}
    return audio_parts([[last]]) if last.get("role") == "user" else []


def silent_turn(messages: Sequence[Message], max_seconds: float) -> bool:
    """Whether the turn to answer holds audio, all of it silence (`is_silent`): it is answered NO_SPEECH_REPLY.
    (`SpeechChat.unheard` asks the same, remembering the clips it decoded.)"""
    parts = last_turn_audio(messages)
    return bool(parts) and all(is_silent(clip_audio(part, max_seconds)) for part in parts)


def in_windows(
    messages: Sequence[Message], decoded: dict[int, torch.Tensor], speech_tokenizer: SpeechTokenizer, max_seconds: float
) -> list[list[Message]]:
    """The conversation once for each window of the clip in its last user turn when that clip is longer than the
    speech tokenizer's window (cut at quiet points; silent windows left out), to be answered in turn; else
    [messages]. decoded: clips decoded so far, by id(part); the windows' are added."""
    last, long = messages[-1] if messages else {}, []
    for part in last_turn_audio(messages):
        if id(part) not in decoded:
            decoded[id(part)] = clip_audio(part, max_seconds)
        if len(windows := speech_tokenizer.windows(decoded[id(part)])) > 1:
            long.append((part, decoded[id(part)], windows))
    if not long:
        return [list(messages)]
    if len(long) > 1:
        raise AudioError(
            f"{len(long)} clips over {speech_tokenizer.config.window_seconds:g} s in one message: a speech LLM answers "
            "one long clip at a time, window by window; send them in separate messages"
        )
    (part, audio, windows), turns = long[0], []
    for window in windows:
        piece = audio[window.start : window.end]
        if is_silent(piece):
            continue
        window_part = {"type": "audio", "array": piece, "sampling_rate": SAMPLE_RATE}
        decoded[id(window_part)] = piece
        content = [window_part if p is part else p for p in last["content"]]
        turns.append([*messages[:-1], {**last, "content": content}])
    return turns or [list(messages)]  # no window loud enough alone: the clip whole


def _parts(message: Message) -> list[Any]:
    content = message.get("content", "")
    return [content] if isinstance(content, str) else list(content)


def _is_audio(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "audio"


def _text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text":
        return str(part.get("text", ""))
    raise ValueError(f"unsupported message part {part!r}: use text or {{'type': 'audio', 'path': …}}")


def _audio_source(part: dict[str, Any]) -> Any:
    """What the speech tokenizer encodes at 16 kHz: a file as it is (decoded there, once), a 16 kHz
    array as it is, an array at another rate resampled here."""
    if "path" in part:
        return part["path"]
    if "array" in part:
        rate = part.get("sampling_rate", SAMPLE_RATE)
        return part["array"] if rate == SAMPLE_RATE else load_audio(part["array"], rate)
    raise ValueError("an audio part needs 'path' (a file, or its bytes), or 'array' with 'sampling_rate'")


def _audio_key(part: dict[str, Any]) -> tuple | None:
    """What identifies an audio part's sound: a file by (path, size, modification time), bytes and
    arrays by a digest of their content; None for what cannot be told apart (a file object)."""
    source = part.get("path", part.get("array"))
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            return None
        stat = os.stat(source)
        return ("file", os.path.abspath(source), stat.st_size, stat.st_mtime_ns)
    if isinstance(source, (bytes, bytearray)):
        return ("bytes", hashlib.sha256(source).hexdigest())
    if isinstance(source, (np.ndarray, torch.Tensor)) and "path" not in part:
        array = np.ascontiguousarray(source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source)
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        return ("array", part.get("sampling_rate", SAMPLE_RATE), array.dtype.str, array.shape, digest)
    return None


def tokens_to_prompt(
    codes: Sequence[int] | torch.Tensor,
    text: str = "",
    tokenizer: PreTrainedTokenizerBase | None = None,
    system: str | None = None,
) -> str:
    """One clip's sound codes (T,) and an optional question after them, as a user turn for any LLM.

    With an LLM tokenizer: the whole prompt through its chat template, ready for the assistant's
    reply (the text SpeechChat gives the model for the same message). Without one: the message text
    alone, `<|sound_start|>…<|sound_end|>` then a newline and the question, for your own template or
    a training set.
    """
    pieces = [codes_to_string(codes)] + ([text] if text else [])
    content = message_text(pieces)
    if tokenizer is None:
        return content
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
