"""pretrain's letter CTC (`ctc_weight`, training/ctc.py): each packed conversation's sound positions read its own
transcript's letters, as torch's CTC loss on that clip alone; a widened run with it learns to transcribe, keeps
the head out of its adapter and resumes with it; recipes whose replies are not transcripts refuse it."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from auralm.lm import SpeechChat, load_llm
from auralm.lm.widening import WIDENING_WEIGHTS
from auralm.tokenizer import SpeechTokenizer
from auralm.training import pretrain
from auralm.training.chat_dataset import PackedSequences, collate_packs
from auralm.training.checkpointing import Checkpoints
from auralm.training.config import ConfigError
from auralm.training.ctc import HEAD_FILE, LETTERS, LetterCTC, letter_ids
from tests.conftest import DATA, TEXTS
from tests.training.conftest import asr_manifest
from tests.training.test_llm_recipes import asr_chat_manifest, losses, train
from tests.training.test_widened_llm import WIDE


def test_letters_are_lower_case_letters_digits_apostrophes_and_single_spaces():
    assert "".join(LETTERS[i - 1] for i in letter_ids("Don't stop -- count 1, 2…")) == "don't stop count 1 2"
    assert letter_ids("¿?") == []


def test_a_saved_head_that_does_not_fit_is_refused_with_its_file_named(tmp_path, llm_folder):
    llm, tokenizer = load_llm(llm_folder)
    (tmp_path / HEAD_FILE).write_bytes(b"not safetensors")  # corrupt
    with pytest.raises(ConfigError, match=f"{HEAD_FILE}: not a CTC head"):
        LetterCTC.attached(llm, tokenizer, 8, adapter=tmp_path)
    save_file({"weight": torch.zeros(len(LETTERS) + 1, 3), "bias": torch.zeros(len(LETTERS) + 1)}, tmp_path / HEAD_FILE)
    with pytest.raises(ConfigError, match="size mismatch"):  # another LLM's width
        LetterCTC.attached(llm, tokenizer, 8, adapter=tmp_path)


def test_each_packed_conversation_reads_its_own_transcript_off_its_own_codes(tmp_path, speech_folder, llm_folder):
    config = pretrain.PretrainConfig(
        train=str(asr_manifest(tmp_path)), tokenizer=str(speech_folder), llm=str(llm_folder),
        output_dir=str(tmp_path / "run"), ctc_weight=0.5, max_tokens=600, batch_size=2, bf16=False, progress=False,
    )  # fmt: skip
    recipe = pretrain.recipe(config)
    recipe.setup()
    try:
        ctc, sequences = recipe.letter_ctc, recipe.loader.dataset.sequences
        packed = next(pack for pack in recipe.loader.dataset.packs if len(pack) >= 2)
        together = collate_packs(list(PackedSequences(sequences, [packed])), pad_id=0)
        alone = collate_packs(list(PackedSequences(sequences, [[i] for i in packed])), pad_id=0)
        generator = torch.Generator().manual_seed(0)
        d = ctc.head.in_features
        by_id, by_position = (torch.randn(n, d, generator=generator) for n in (len(recipe.tokenizer), 600))

        def hidden(batch):  # the same state for the same token at the same place in its conversation
            return by_id[batch.ids] + by_position[batch.positions]

        with torch.no_grad():
            packed_loss, alone_loss = ctc.loss_sum(hidden(together), together), ctc.loss_sum(hidden(alone), alone)
            texts = [line["text"] for line in map(json.loads, (tmp_path / "asr.jsonl").read_text().splitlines())]
            expected = 0.0
            for i in packed:  # torch's CTC on the clip's code positions alone, its manifest transcript's letters
                ids = torch.from_numpy(sequences[i].ids)
                codes = ((ids >= ctc.first_code) & (ids < ctc.first_code + ctc.n_codes)).nonzero().flatten()
                log_probs = F.log_softmax(ctc.head(by_id[ids[codes]] + by_position[codes]), dim=-1)
                letters = torch.tensor(letter_ids(texts[i]))
                expected += F.ctc_loss(log_probs, letters, [len(codes)], [len(letters)], reduction="sum")
        torch.testing.assert_close(packed_loss, alone_loss)
        torch.testing.assert_close(packed_loss, expected)
        assert recipe.loss_sum(together) > recipe._cross_entropy(recipe._target_logits(together), together)

        # reading: a head whose class is the state's first dims, states that spell each transcript, a blank after
        # each letter (so a clip of T codes reads its transcript's first ⌈T/2⌉ letters, doubled letters kept)
        with torch.no_grad():
            ctc.head.weight.copy_(torch.eye(len(LETTERS) + 1, d))
            ctc.head.bias.zero_()
        spelling, offset, expected = torch.zeros(*together.ids.shape, d), 0, []
        for i in packed:
            ids = torch.from_numpy(sequences[i].ids)
            codes = ((ids >= ctc.first_code) & (ids < ctc.first_code + ctc.n_codes)).nonzero().flatten()
            letters = letter_ids(texts[i])
            for frame, position in enumerate(codes.tolist()):
                if frame % 2 == 0 and frame // 2 < len(letters):
                    spelling[0, offset + position, letters[frame // 2]] = 1
                else:
                    spelling[0, offset + position, 0] = 1
            expected.append("".join(LETTERS[c - 1] for c in letters[: (len(codes) + 1) // 2]))
            offset += len(ids)
        transcripts, readings = ctc.read(spelling, together)
        assert transcripts == ["".join(LETTERS[c - 1] for c in letter_ids(texts[i])) for i in packed]
        assert readings == expected and len(readings) >= 2
    finally:
        recipe.cleanup()


def test_a_widened_run_with_letter_ctc_transcribes_resumes_and_hands_its_head_to_the_next_run(
    tmp_path, speech_folder, llm_folder
):
    run = tmp_path / "run"
    settings = [f"train={asr_manifest(tmp_path)}", f"tokenizer={speech_folder}", f"llm={llm_folder}",
                f"output_dir={run}", "max_tokens=400", "batch_size=2", "lr=0.03", "warmup_steps=5", "log_every=10",
                "instruction_first=0", "ctc_weight=0.3", "max_steps=80", f"val={asr_manifest(tmp_path)}",
                "val_every=40", *WIDE]  # fmt: skip
    result = train("pretrain", *settings, "max_steps=40")
    assert result.returncode == 0, result.stderr
    saved = Checkpoints(run / "checkpoints").latest()["model"]
    assert {key for key in saved if key.startswith("letter_ctc.")} == {"letter_ctc.head.weight", "letter_ctc.head.bias"}
    result = train("pretrain", *settings, extra_args=("--resume",))  # the head comes back with the checkpoint
    assert result.returncode == 0 and "resuming at step 40" in result.stdout, result.stderr
    assert losses(run)[-1] < losses(run)[0] / 4, losses(run)  # the transcripts' loss and the letters' together
    assert losses(run, "val_loss")[-1] < 0.1, losses(run, "val_loss")  # the transcripts' alone
    letter_wer = losses(run, "val_letter_wer")  # what the head reads off the clips, once per val_loss
    assert len(letter_wer) == len(losses(run, "val_loss")) and letter_wer[-1] < letter_wer[0], letter_wer
    assert not any("letter_ctc" in key for key in load_file(run / "adapter" / WIDENING_WEIGHTS))
    head = load_file(run / "adapter" / HEAD_FILE)  # beside the adapter, as the last checkpoint has it
    trained = Checkpoints(run / "checkpoints").latest()["model"]
    torch.testing.assert_close(head["weight"], trained["letter_ctc.head.weight"])
    more = tmp_path / "more"  # a run from that adapter starts with its head, and at lr 0 it stays so
    result = train("pretrain", *settings[:3], f"output_dir={more}", f"adapter={run / 'adapter'}", "lr=0",
                   "ctc_weight=0.3", "max_steps=1", "max_tokens=400", "batch_size=2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(load_file(more / "adapter" / HEAD_FILE), head)
    chat = SpeechChat(*load_llm(llm_folder, adapter=run / "adapter"), SpeechTokenizer.from_pretrained(speech_folder))
    assert chat.transcribe(DATA / "en_16k.wav") == TEXTS["en_16k.wav"]

    sft = [f"train={asr_chat_manifest(tmp_path)}", f"tokenizer={speech_folder}", f"llm={llm_folder}",
           f"output_dir={tmp_path / 'sft'}", "batch_size=2", "max_steps=1", "ctc_weight=0.3"]  # fmt: skip
    result = train("sft", *sft)
    assert result.returncode == 2 and "ctc_weight: for pretrain" in result.stderr, result.stderr
