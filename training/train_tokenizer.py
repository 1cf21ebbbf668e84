"""Recipe: train a speech tokenizer (the bottleneck between Whisper's frozen encoder and decoder).

    auralm train tokenizer --config tokenizer train=data/train.jsonl val=data/val.jsonl
    torchrun --nproc_per_node 4 -m auralm train tokenizer --config tokenizer …   (DDP, same global batch)

WhisperSpeech's and Ichigo's objective: Whisper's decoder reads the transcript from the quantized path,
    loss = CE(transcript | quantized) + kl_weight · KL(teacher ‖ student) + VQ commitment
where the teacher is the same frozen decoder reading the unquantized encoder frames. The codebook learns
by EMA (vector-quantize-pytorch: k-means init, dead-code replacement), everything else by AdamW with
warmup + cosine decay and gradient clipping. The encoder is frozen, so its frames are computed once
and cached (features.py). Output: `output_dir/tokenizer/`, which `SpeechTokenizer.from_pretrained` loads.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from whisper.tokenizer import get_tokenizer

from auralm.checkpoints import load_whisper
from auralm.data import ArrowAudio, read_examples
from auralm.tokenizer import SpeechTokenizer, TokenizerConfig, word_error_rate
from auralm.tokenizer.bottleneck import DECODE_BLOCKS, codebook_usage
from auralm.training.audio_dataset import AudioTextDataset
from auralm.training.checkpointing import capture_rng, restore_rng
from auralm.training.config import ConfigError, RunConfig, config_dict
from auralm.training.features import CachedWindow, FeatureCache
from auralm.training.loop import (
    LogWindow,
    MetricsLog,
    Stopper,
    end_run,
    lr_schedule,
    next_batch,
    run_recipe,
    shows_progress,
    start_run,
)
from auralm.training.sampler import BucketBatchSampler

IGNORE = -100  # target positions without a loss: the task prompt and padding
HEAD_WIDTH = 64  # the bottleneck's attention heads are 64 wide, as Ichigo's
TRAINING_KNOBS = ("codebook_decay", "kmeans_init", "dead_code_threshold")


@dataclass
class TokenizerTrainingConfig(RunConfig):
    train: str = ""  # a manifest, folder, datasets folder or Parquet file (see auralm.data.read_examples)
    val: str | None = None  # held-out examples for the word error rate of text decoded from tokens
    output_dir: str = "runs/tokenizer"
    init: str | None = None  # a tokenizer folder whose bottleneck a fresh run starts from (fine-tuning)
    keep_codes: bool = False  # with init: train only the decode half; init's codes and hash stay (LLMs still pair)
    feature_cache: str | None = None  # where encoder frames are kept; default output_dir/features
    # the tokenizer: every TokenizerConfig key (whisper, n_codes, window_seconds, depth, …) is a key of this config;
    # the widths come from the Whisper backbone
    shape: TokenizerConfig = field(
        default_factory=TokenizerConfig, metadata={"derived": ("n_mels", "n_state", "n_head")}
    )
    language: str = "en"
    pack: bool = False  # short clips share a window; off, each clip is padded with the mask code as decoding does
    # optimisation (the rest: RunConfig)
    lr: float = 1e-3
    weight_decay: float = 0.01
    kl_weight: float = 1.0
    # validation
    eval_every: int = 200
    val_examples: int = 32


class Losses(NamedTuple):
    """One micro-batch's losses. CE and KL are sums over its transcript tokens: a step divides them by
    the tokens of the whole global batch, so every token weighs the same however the batch is split."""

    ce_sum: torch.Tensor
    kl_sum: torch.Tensor
    tokens: torch.Tensor  # transcript tokens with a loss
    commitment: torch.Tensor  # mean over the micro-batch's frames
    codes: torch.Tensor  # (N,) the codes of the speech frames, for codebook usage


class TokenizerRecipe:
    def __init__(self, config: TokenizerTrainingConfig, resume: bool = False):
        if not config.train:
            raise ConfigError("no training data: set train= (a manifest, folder, datasets folder or Parquet file)")
        self.config, self.resume = config, resume

    # ---- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        c = self.config
        self.world, self.run_dir, self.checkpoints = start_run(c, self.resume)
        torch.manual_seed(c.seed)
        self.whisper = load_whisper(c.shape.whisper, device=self.world.device)
        dims = self.whisper.dims
        widths = {
            "n_mels": dims.n_mels,
            "n_state": dims.n_audio_state,
            "n_head": max(1, dims.n_audio_state // HEAD_WIDTH),
        }
        # built once the process group is up: its EMA then syncs over ranks
        self.tokenizer = SpeechTokenizer(replace(c.shape, **widths), self.whisper).to(self.world.device)
        self.bottleneck = self.tokenizer.bottleneck.train()
        if c.keep_codes:
            if not c.init:
                raise ConfigError("keep_codes=true keeps the codes of init=: name the tokenizer folder to start from")
            self.bottleneck.keep_codes()

        dataset = AudioTextDataset(read_examples(c.train), window_seconds=c.shape.window_seconds, pack=c.pack)
        cache = FeatureCache(c.feature_cache or self.run_dir / "features", self.tokenizer)
        windows, self.skipped = cache.build(
            dataset, self.world, num_workers=c.num_workers, progress=shows_progress(c, self.world)
        )
        self.val_examples = read_examples(c.val)[: c.val_examples] if c.val else []
        self.sampler = BucketBatchSampler(
            [w.samples for w in windows], c.batch_size, seed=c.seed, rank=self.world.rank,
            world_size=self.world.size, micro_batches=c.micro_batches,
        )  # fmt: skip
        self.loader = DataLoader(
            CachedWindows(cache, windows, self.whisper, c.language),
            batch_sampler=self.sampler,
            collate_fn=self._collate,
            num_workers=c.num_workers,
            generator=torch.Generator(),  # the global RNG stays untouched: resuming replays it exactly
        )
        self.model = (
            DistributedDataParallel(self.bottleneck, broadcast_buffers=False)
            if self.world.size > 1
            else self.bottleneck
        )
        trained = [p for p in self.bottleneck.parameters() if p.requires_grad]
        decay = [p for p in trained if p.dim() >= 2]
        no_decay = [p for p in trained if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c.lr, betas=(0.9, 0.95),
        )  # fmt: skip
        self.scheduler = lr_schedule(self.optimizer, c.warmup_steps, c.max_steps, c.decay_steps)
        self.metrics = MetricsLog(self.run_dir, enabled=self.world.is_main)
        self.step = 0
        self.last_validation: dict[str, list[int]] = {}
        state = self.checkpoints.latest() if self.resume else None
        if state is not None:
            self.bottleneck.load_state_dict(state["bottleneck"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["sampler"])
            self.skipped.load_state_dict(state["skipped"])
            restore_rng(state["rng"])
            self.step = state["step"]
        elif c.init:
            self._start_from(c.init)
        if self.world.is_main:
            print(
                f"tokenizer training: {len(windows)} windows of ≤ {c.shape.window_seconds} s, {len(self.val_examples)} "
                f"validation clips, {self.world.size} process(es) on {self.world.device}"
                + (f"; resuming at step {self.step}" if self.step else ""),
                flush=True,
            )

    def _start_from(self, folder: str) -> None:
        """The bottleneck weights (codebook and its EMA state included) of a saved tokenizer of the same shape.

        With keep_codes the decode half may be deeper than init's: its first blocks are init's, and each added
        block starts as the identity (zero output projections), so training begins from init's decoding.
        """
        init = SpeechTokenizer.from_pretrained(folder, whisper=self.whisper)
        added = self.tokenizer.config.depth - init.config.depth
        knobs = dict.fromkeys(TRAINING_KNOBS) | ({"depth": None} if self.config.keep_codes and added >= 0 else {})
        if init.config.to_dict() | knobs != self.tokenizer.config.to_dict() | knobs:  # knobs may change; shape not
            raise ConfigError(
                f"init={folder}: its config {init.config.to_dict()} differs from this run's"
                + (" (with keep_codes=true, depth may grow)" if added > 0 and not self.config.keep_codes else "")
            )
        missing, unexpected = self.bottleneck.load_state_dict(init.bottleneck.state_dict(), strict=False)
        new_blocks = tuple(f"{DECODE_BLOCKS}.{i}." for i in range(init.config.depth, self.tokenizer.config.depth))
        assert not unexpected and all(k.startswith(new_blocks) for k in missing), (missing, unexpected)
        for block in self.bottleneck.decode_blocks[init.config.depth :]:
            for projection in (block.attn.out, block.mlp[-1]):
                nn.init.zeros_(projection.weight)
                nn.init.zeros_(projection.bias)

    # ---- training --------------------------------------------------------------------------

    def train(self) -> None:
        c = self.config
        stopper = Stopper(c.max_minutes, c.save_every_minutes)
        usage = torch.zeros(self.tokenizer.config.vocab_size)
        log_window = LogWindow()
        data = iter(self.loader)
        bar = tqdm(
            total=c.max_steps, initial=self.step, desc="train tokenizer", disable=not shows_progress(c, self.world)
        )
        try:
            while self.step < c.max_steps and not stopper.stop_everywhere(self.world):
                self.optimizer.zero_grad(set_to_none=True)
                batches = []
                for _ in range(c.micro_batches):
                    batch, data = next_batch(data, self.loader)
                    batches.append(batch)
                step_values: dict[str, float] = {}
                local_tokens = sum(int((b.targets != IGNORE).sum()) for b in batches)
                tokens = self.world.sum(torch.tensor(float(local_tokens), device=self.world.device))
                for micro, batch in enumerate(batches):
                    last = micro == len(batches) - 1
                    with self.model.no_sync() if self.world.size > 1 and not last else contextlib.nullcontext():
                        losses = self.losses(batch)
                        # DDP averages gradients over ranks: × world size makes the CE and KL per global token
                        text = (losses.ce_sum + c.kl_weight * losses.kl_sum) * self.world.size / tokens
                        (text + losses.commitment / c.micro_batches).backward()
                    parts = {
                        "ce": self.world.sum(losses.ce_sum.detach()) / tokens,
                        "kl": self.world.sum(losses.kl_sum.detach()) / tokens,
                        "commitment": self.world.mean(losses.commitment.detach()) / c.micro_batches,
                    }
                    parts["total"] = parts["ce"] + c.kl_weight * parts["kl"] + parts["commitment"]
                    for name, value in parts.items():
                        step_values[name] = step_values.get(name, 0.0) + float(value)
                    usage += torch.bincount(losses.codes.cpu(), minlength=len(usage))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.bottleneck.parameters(), c.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.sampler.advance()
                self.step += 1
                bar.update()
                log_window.add(step_values)
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    row = log_window.means()
                    row |= codebook_usage(usage) | {
                        "grad_norm": float(grad_norm),
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    self.metrics.write(self.step, row)
                    bar.set_postfix(loss=f"{row['total']:.3f}", used=f"{row['codes_used']:.0%}")
                    usage = torch.zeros_like(usage)
                if c.val and (self.step % c.eval_every == 0 or self.step == c.max_steps):
                    self.validate()
                if self.step % c.save_every == 0 or stopper.save_due():
                    self.save_checkpoint()
                    stopper.saved()
        finally:
            bar.close()
            stopper.close()
        self.save_checkpoint()
        if stopper.signal:
            print(f"stopped by {stopper.signal} at step {self.step}; --resume goes on from here", flush=True)
        elif self.step < c.max_steps:
            print(f"stopped after {c.max_minutes} minutes at step {self.step}; --resume goes on from here", flush=True)

    def losses(self, batch: WindowBatch) -> Losses:
        device = self.world.device
        frames, code_mask = batch.frames.to(device).float(), batch.code_mask.to(device)
        tokens, targets = batch.tokens.to(device), batch.targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            out = self.model(frames, code_mask)  # features (B, T, d), codes (B, T / ds)
            logits = self.whisper.decoder(tokens, out.features)  # (B, L, vocab)
            with torch.no_grad():
                teacher = self.whisper.decoder(tokens, frames)  # the unquantized path
        valid = targets != IGNORE
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        kl = F.kl_div(
            F.log_softmax(logits.float()[valid], -1), F.log_softmax(teacher.float()[valid], -1),
            log_target=True, reduction="sum",
        )  # fmt: skip
        return Losses(ce, kl, valid.sum(), out.commitment.float(), out.codes[code_mask])

    @torch.no_grad()
    def validate(self) -> None:
        """Word error rate of the text Whisper's decoder reads from the codes of held-out clips
        (encoded as `SpeechTokenizer.encode` does, greedy decoding); rank 0 only."""
        if self.world.is_main:
            self.bottleneck.eval()
            audio = [e.audio.read() if isinstance(e.audio, ArrowAudio) else e.audio for e in self.val_examples]
            codes = self.tokenizer.encode(audio)
            texts = self.tokenizer.decode_text(codes, language=self.config.language, temperatures=(0.0,))
            words = [max(1, len(e.text.split())) for e in self.val_examples]
            errors = sum(
                word_error_rate(e.text, t) * n for e, t, n in zip(self.val_examples, texts, words, strict=True)
            )
            self.metrics.write(self.step, {"val_wer": errors / sum(words), "val_example": texts[0]})
            self.last_validation = {e.id: c.tolist() for e, c in zip(self.val_examples, codes, strict=True)}
            self.bottleneck.train()
        self.world.barrier()

    # ---- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Everything a resumed run needs (rank 0 writes; the state is the same on every rank), and the
        tokenizer as it stands now in output_dir/tokenizer/."""
        if self.world.is_main:
            state = {
                "step": self.step,
                "bottleneck": self.bottleneck.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "skipped": self.skipped.state_dict(),
                "rng": capture_rng(),
                "config": config_dict(self.config),
            }
            self.checkpoints.save(self.step, state)
            self.tokenizer.save_pretrained(self.run_dir / "tokenizer")
            if self.last_validation:
                (self.run_dir / "validation_codes.json").write_text(json.dumps(self.last_validation))
        self.world.barrier()

    def cleanup(self) -> None:
        end_run("tokenizer", self.run_dir / "tokenizer", self.step, self.skipped, self.metrics, self.world)

    # ---- helpers ---------------------------------------------------------------------------

    def _collate(self, items: list[tuple[torch.Tensor, int, list[int], int]]) -> WindowBatch:
        frames = torch.stack([item[0] for item in items])  # (B, T, d) float16
        config = self.tokenizer.config
        n_codes = torch.tensor([config.num_codes(item[1]) for item in items])
        code_mask = torch.arange(config.codes_per_window)[None, :] < n_codes[:, None]  # (B, T / ds)
        length = max(len(item[2]) for item in items) - 1
        tokens = torch.zeros(len(items), length, dtype=torch.long)
        targets = torch.full((len(items), length), IGNORE, dtype=torch.long)
        for row, (_, _, ids, prompt) in enumerate(items):
            tokens[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            targets[row, prompt - 1 : len(ids) - 1] = torch.tensor(ids[prompt:])  # the prompt predicts nothing
        return WindowBatch(frames, code_mask, tokens, targets)


class WindowBatch(NamedTuple):
    frames: torch.Tensor  # (B, T, d) float16 encoder frames
    code_mask: torch.Tensor  # (B, T / downsample) bool: codes that hold speech
    tokens: torch.Tensor  # (B, L) decoder input: task prompt + transcript
    targets: torch.Tensor  # (B, L) the next token, IGNORE where nothing is learned


class CachedWindows(Dataset):
    """Cached windows as (frames (T, d) float16, audio samples, decoder token ids, prompt length). The ids
    are the task prompt decoding starts from (start of transcript, language and task on multilingual
    models, no timestamps), the transcript, end of text."""

    def __init__(self, cache: FeatureCache, windows: list[CachedWindow], whisper, language: str):
        self.cache, self.windows, self.max_tokens = cache, windows, whisper.dims.n_text_ctx
        self.tokenizers = {}
        self.multilingual, self.num_languages, self.language = whisper.is_multilingual, whisper.num_languages, language

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, list[int], int]:
        window = self.windows[index]
        language = window.language or self.language
        if language not in self.tokenizers:
            self.tokenizers[language] = get_tokenizer(
                self.multilingual, num_languages=self.num_languages, language=language, task="transcribe"
            )
        tokenizer = self.tokenizers[language]
        prompt = list(tokenizer.sot_sequence_including_notimestamps)
        text = tokenizer.encode(" " + window.text.strip())[: self.max_tokens - len(prompt) - 1]
        return self.cache.frames(window), window.samples, prompt + text + [tokenizer.eot], len(prompt)


def run(config: TokenizerTrainingConfig, resume: bool = False) -> int:
    return run_recipe(TokenizerRecipe(config, resume))


CONFIG = TokenizerTrainingConfig
