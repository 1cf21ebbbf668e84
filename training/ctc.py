"""pretrain's `ctc_weight`: beside the transcript's cross-entropy, a CTC loss that reads the transcript's letters off
the LLM's last hidden states at the clip's sound positions, through a small head of its own.

Joint CTC-attention training (Watanabe et al., 2017) for a decoder-only LLM: the transcript's tokens learn to read
the clip through attention, which on little data converges slowly; CTC asks every sound position to say which
letters sound there, so the states the transcript attends to become phonetic early. Only the pretraining
conversation qualifies (one clip, its transcript the reply). The head trains with the model and is saved beside
the adapter (HEAD_FILE), where a run that goes on from that adapter with CTC picks it up: a fresh head's random
gradients would otherwise lead the first steps. Nothing loads it to chat, and shipping leaves it behind.
On validation its greedy reading of each clip is scored (`read`: the recipe's val_letter_wer).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from auralm.training.chat_dataset import IGNORE, TokenBatch
from auralm.training.config import ConfigError

LETTERS = " 'abcdefghijklmnopqrstuvwxyz0123456789"  # CTC's classes after its blank (0)
HEAD_FILE = "letter_ctc.safetensors"  # in the adapter folder, for training only


def letter_ids(text: str) -> list[int]:
    """`text` as CTC classes: lower-case letters, digits, apostrophes; anything else a space (runs of them one)."""
    spoken = re.sub(r"[^a-z0-9']+", " ", text.lower()).strip()
    return [LETTERS.index(c) + 1 for c in spoken]


class LetterCTC(nn.Module):
    """The letters of each conversation's reply, from the hidden states at its sound code positions.

    first_code, n_codes: the ids of the sound codes in the LLM's vocabulary; tokenizer: the LLM's, to read the
    replies back as text."""

    def __init__(self, d_model: int, first_code: int, n_codes: int, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.head = nn.Linear(d_model, len(LETTERS) + 1)
        self.first_code, self.n_codes, self.tokenizer = first_code, n_codes, tokenizer

    @classmethod
    def attached(
        cls, model: nn.Module, tokenizer: PreTrainedTokenizerBase, n_codes: int, adapter: str | Path | None = None
    ) -> LetterCTC:
        """A head for `model`'s last hidden states, made its submodule `letter_ctc` so it trains, checkpoints and
        resumes with it (the recipe leaves it out of the adapter's weights); the sound codes are the vocabulary's
        last n_codes ids (sound_vocabulary). It starts as the head `adapter` was trained with, where it has one."""
        head = model.get_output_embeddings().weight
        model.letter_ctc = cls(head.shape[1], len(tokenizer) - n_codes, n_codes, tokenizer).to(head.device)
        saved = Path(adapter) / HEAD_FILE if adapter else None
        if saved and saved.is_file():
            try:
                model.letter_ctc.head.load_state_dict(load_file(saved))
            except (RuntimeError, SafetensorError) as e:
                raise ConfigError(f"{saved}: not a CTC head for this LLM ({e}); move it aside to start anew") from e
        return model.letter_ctc

    def save(self, adapter: Path) -> None:
        """The head into the adapter folder `adapter`, for a run that goes on from it."""
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}, adapter / HEAD_FILE)

    def loss_sum(self, hidden: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """The CTC loss summed over the batch's conversations that hold sound codes and a reply.
        hidden: (B, L, d) the LLM's last hidden states (after its final norm) for batch.ids (B, L)."""
        frames, letters = self._clips(hidden, batch)
        if not frames:
            return hidden.sum() * 0  # nothing to read: no loss, but the graph stays whole
        log_probs = F.log_softmax(self.head(nn.utils.rnn.pad_sequence(frames).float()), dim=-1)  # (T, N, C)
        return F.ctc_loss(
            log_probs,
            torch.cat(letters).to(hidden.device),
            input_lengths=torch.tensor([len(f) for f in frames]),
            target_lengths=torch.tensor([len(s) for s in letters]),
            reduction="sum",
            zero_infinity=True,  # a clip spoken faster than one letter a code: no loss rather than an infinite one
        )

    @torch.no_grad()
    def read(self, hidden: torch.Tensor, batch: TokenBatch) -> tuple[list[str], list[str]]:
        """What the head reads off each conversation's sound positions, greedily (the best letter at each code,
        repeats merged, blanks dropped), beside its reply's letters: (transcripts, readings), as text."""
        frames, letters = self._clips(hidden, batch)
        best = [torch.unique_consecutive(self.head(f.float()).argmax(dim=-1)) for f in frames]
        return [spelled(s) for s in letters], [spelled(b) for b in best]

    def _clips(self, hidden: torch.Tensor, batch: TokenBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each conversation with sound codes and a reply: its hidden states at the codes (T, d) and the reply's
        letters (S,), in row order."""
        ids, targets = batch.ids.to(hidden.device), batch.targets.to(hidden.device)
        is_code = (ids >= self.first_code) & (ids < self.first_code + self.n_codes)
        frames, letters = [], []
        for row in range(ids.shape[0]):
            starts = [*(batch.positions[row] == 0).nonzero().flatten().tolist(), ids.shape[1]]
            for start, end in itertools.pairwise(starts):  # the row's conversations (and its padding)
                reply = targets[row, start:end]
                spoken = letter_ids(self.tokenizer.decode(reply[reply != IGNORE], skip_special_tokens=True))
                codes = is_code[row, start:end].nonzero().flatten() + start
                if spoken and len(codes):
                    frames.append(hidden[row, codes])
                    letters.append(torch.tensor(spoken))
        return frames, letters


def spelled(classes: torch.Tensor) -> str:
    """CTC classes (S,) as text, blanks dropped."""
    return "".join(LETTERS[i - 1] for i in classes.tolist() if i)
