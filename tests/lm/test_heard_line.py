"""A reply that first says what it heard (sft's `heard_first`, SpeechGPT's chain of modality): SpeechChat gives the
answer alone, whole or streamed in any pieces, and stop strings end the answer, never the heard line."""

import pytest
import torch
from transformers import AutoTokenizer

from auralm.lm.loading import llm_folder
from auralm.lm.replies import row_reply
from auralm.lm.streaming import RowLimits, after_heard
from auralm.tokenizer.token_format import HEARD_PREFIX, heard_reply, without_heard

REPLIES = [
    heard_reply("What is 3 plus 10?", "13."),
    heard_reply("Repeat after me: the cat sat.", "The cat sat.\nThat is all."),
    heard_reply("Say nothing.", ""),
    HEARD_PREFIX + "a line cut short by the token limit",
    heard_reply("Say yes.", heard_reply("Say yes.", "Yes.")),  # a heard line said twice
    heard_reply("Say yes.", "He"),
    "13.",
    "He",  # a reply that only begins like the heard line
    "Heard you! Paris.",
    "",
]


def test_the_heard_line_is_taken_off_and_nothing_else():
    assert heard_reply("What is 3 plus 10?", "13.") == "Heard: What is 3 plus 10?\n13."
    assert [without_heard(r) for r in REPLIES] == [
        "13.", "The cat sat.\nThat is all.", "", "", "Yes.", "He", "13.", "He", "Heard you! Paris.", ""
    ]  # fmt: skip


@pytest.mark.parametrize("reply", REPLIES)
def test_a_streamed_reply_is_the_whole_reply_without_its_heard_line_however_it_is_split(reply):
    for size in (1, 2, 3, 7, len(reply) or 1):
        pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
        for first in range(len(pieces) + 1):  # one larger first piece, then the rest
            split = ["".join(pieces[:first]), *pieces[first:]]
            streamed = list(after_heard(iter(split)))
            assert "".join(streamed) == without_heard(reply)
            assert "" not in streamed


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(llm_folder())  # SmolLM2's: the default LLM's


def test_a_reply_and_its_stop_strings_count_from_after_the_heard_line(tokenizer):
    said = heard_reply("Count to three.", "One, two, three.")
    ids = tokenizer(said, add_special_tokens=False)["input_ids"]
    prompt = torch.zeros((1, 3), dtype=torch.long)
    sequence = torch.cat([prompt, torch.tensor([ids])], dim=1)
    limits = RowLimits(tokenizer, 3, [100], [["three"]])
    assert limits(sequence, None).item()  # "three" in the answer ends it
    heard_only = torch.cat([prompt, torch.tensor([tokenizer(HEARD_PREFIX + "Count to three.\n")["input_ids"]])], 1)
    assert not RowLimits(tokenizer, 3, [100], [["three"]])(heard_only, None).item()  # not in the heard line

    reply = row_reply(tokenizer, 3, ids, RowLimits(tokenizer, 3, [100], [[]]), 0, {tokenizer.eos_token_id})
    assert reply.text == "One, two, three." and reply.completion_tokens == len(ids)
    cut = row_reply(tokenizer, 3, ids, RowLimits(tokenizer, 3, [100], [["three"]]), 0, {tokenizer.eos_token_id})
    assert cut.text == "One, two, "
