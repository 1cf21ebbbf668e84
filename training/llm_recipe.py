"""The speech-LLM recipe (`pretrain`, `sft`): the LLM given sound tokens, what of it trains, the training loop,
checkpoints and outputs. Each recipe module gives `LLMRecipe` its `ConversationSource` (which conversations it
learns from); everything else is here, read top to bottom.

The LLM (`load_llm(llm)`) gets the speech tokenizer's sound tokens (`add_sound_tokens`, which pins its hash). Trained:
the sound tokens' embedding rows, input and output (peft's trainable tokens: only those rows are parameters, so the
text rows stay bit-identical), plus LoRA on `lora_targets`; or, with widen_dims, new weights of the LLM widened for
sound, which text never reaches (widened_llm.py); or, with full=true, every weight. The loss is the cross-entropy of
the assistant's tokens, summed and divided by the target tokens of the whole global batch, so the result does not
depend on how the batch is split over ranks and micro-batches. Under torchrun the LLM is sharded with FSDP2
(`fully_shard`, each decoder layer and the root), on CUDA (nccl) and CPU (gloo) alike.

Outputs (rank 0, at every checkpoint): `output_dir/adapter/`, a peft folder that `load_llm(llm, adapter=…)` loads as
it is: the LoRA weights, the sound tokens' rows, the tokenizer with the sound tokens and `sound_tokens.json` (the
speech tokenizer's hash, so SpeechChat refuses another tokenizer), with ctc_weight its CTC head (ctc.py); with
full=true `output_dir/merged/`, a whole model folder. merge=true also writes `merged/` for a LoRA run, at the end.
"""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedModel

from auralm.checkpoints import CheckpointError
from auralm.lm.loading import SOUND_TOKENS_FILE, load_llm
from auralm.lm.merge import merge_speech_llm
from auralm.lm.vocabulary import CODES_KEY, HASH_KEY, add_sound_tokens, sound_vocabulary
from auralm.lm.widening import save_widening
from auralm.tokenizer import SpeechTokenizer, corpus_word_error_rate
from auralm.training.audio_dataset import SkippedExamples
from auralm.training.chat_dataset import (
    IGNORE,
    CodeCache,
    Conversation,
    DistillBatch,
    Distilled,
    TokenBatch,
    packed_conversations,
)
from auralm.training.checkpointing import capture_rng, restore_rng
from auralm.training.config import ConfigError, RunConfig, config_dict
from auralm.training.ctc import LetterCTC
from auralm.training.features import FeatureCache
from auralm.training.loop import (
    LogWindow,
    MetricsLog,
    Stopper,
    end_run,
    lr_schedule,
    next_batch,
    shows_progress,
    start_run,
)
from auralm.training.quiet_lora import confine, quiet_directions, reply_pairs
from auralm.training.sampler import BucketBatchSampler
from auralm.training.validation import ValidationSet
from auralm.training.widened_llm import is_widened, widened_llm, widened_parts

LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LLMTrainingConfig(RunConfig):
    output_dir: str = "runs/llm"
    tokenizer: str = ""  # the speech tokenizer: a folder from `auralm train tokenizer`, or an Ichigo/WhisperSpeech file
    whisper: str | None = None  # its Whisper backbone, when not the one its checkpoint names
    llm: str = "smollm2"  # a Hugging Face folder or .gguf file; smollm2 = the packaged SmolLM2-135M-Instruct
    code_cache: str | None = None  # where the clips' sound codes are kept; default output_dir/codes
    frames_cache: str | None = None  # a tokenizer run's features/ folder: clips cached there skip the encoder
    val: str | None = None  # held-out data of train='s kind: its loss per target token is logged as val_loss
    val_every: int = 100  # steps between val_loss rows (and one at the end)
    # what trains
    full: bool = False  # every weight; otherwise LoRA + the sound tokens' rows
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_LAYERS))
    lora_quiet: float = 0.0  # > 0: LoRA reads only this share of each layer's input directions, those typed text
    # uses least, so the merged adapter changes text answers less (quiet_lora.py); 0: all of them
    widen_dims: int = 0  # > 0: no LoRA; the LLM widened by this many hidden dims that only sound tokens use, so
    # merged it answers text as before, exactly (lm/widening.py; adapter= may name a widened adapter to go on from)
    widen_neurons: int = 128  # with widen_dims: MLP neurons only sound positions switch on
    widen_heads: int = 1  # with widen_dims: key/value heads (with their query heads) whose keys and values are sound's
    widen_head_rank: int = 0  # with widen_heads: > 0 trains the new heads' large parts as products of this rank
    merge: bool = False  # also write output_dir/merged/ (the adapter merged into the LLM) at the end
    adapter: str | None = None  # an earlier run's adapter to go on training (sft after pretrain), LoRA settings and all
    allow_mismatch: bool = False  # adapter= may be trained on another tokenizer's codes (the one tokenizer= was
    # fine-tuned from with init=: its codes keep much of their meaning, so the sound rows start nearer than anew)
    # sequences
    instruction_first: float = 0.5  # the share of requests put before the clip, not after (users do both)
    max_tokens: int = 1024  # a packed row's length; longer conversations are skipped
    pack: bool = True  # several conversations share a row (attention stays within each)
    lr: float = 2e-4
    kl_temperature: float = 2.0  # distilled conversations: both distributions softened by this (Ultravox's 2)
    reply_ce_weight: float = 1.0  # distilled conversations: + this × cross-entropy on the reply's own tokens
    ctc_weight: float = 0.0  # pretrain: + this × a CTC loss of the transcript's letters read off the clip's sound
    # positions (ctc.py; one process); the logged loss includes it, val_loss does not


class ConversationSource(Protocol):
    """What a speech-LLM recipe learns from."""

    def conversations(self, recipe: LLMRecipe) -> tuple[list[Conversation], SkippedExamples]:
        """The conversations to learn from (audio parts as codes, see chat_dataset), and the examples left out.
        Called once in setup, when `recipe` has its world, run folder, speech tokenizer, code cache and the LLM
        as loaded (`recipe.llm`, before anything trains)."""


class LLMRecipe:
    """A speech LLM trained on the conversations `data` gives (a `Recipe`: setup / train / save_checkpoint /
    cleanup)."""

    def __init__(self, name: str, config: LLMTrainingConfig, data: ConversationSource, resume: bool = False):
        if not config.tokenizer:
            raise ConfigError(
                "no speech tokenizer: set tokenizer= (a folder from `auralm train tokenizer`, or an Ichigo/"
                "WhisperSpeech checkpoint)"
            )
        self.name, self.config, self.data, self.resume = name, config, data, resume

    # ---- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        c = self.config
        self.world, self.run_dir, self.checkpoints = start_run(c, self.resume)
        if c.ctc_weight and (self.name != "pretrain" or self.world.size > 1):
            raise ConfigError("ctc_weight: for pretrain in one process (its replies are the clips' transcripts)")
        torch.manual_seed(c.seed)  # the same LoRA initialisation on every rank
        self.speech = SpeechTokenizer.from_pretrained(c.tokenizer, whisper=c.whisper, device=self.world.device)
        llm, self.tokenizer = load_llm(c.llm)
        add_sound_tokens(llm, self.tokenizer, self.speech)
        frames = FeatureCache(c.frames_cache, self.speech) if c.frames_cache else None
        self.code_cache = CodeCache(c.code_cache or self.run_dir / "codes", self.speech, frames)

        self.llm = llm  # as loaded, before anything trains: what a recipe may ask for replies to keep
        conversations, self.skipped = self.data.conversations(self)
        if c.full and conversations and isinstance(conversations[0], Distilled):
            raise ConfigError("full=true: distillation's teacher is the LLM without the adapter; train LoRA")
        dataset, collate, kept = packed_conversations(conversations, self.tokenizer, c.max_tokens, c.pack, self.skipped)
        if len(dataset) < c.batch_size:
            raise ConfigError(
                f"{kept} conversations make {len(dataset)} rows of ≤ {c.max_tokens} tokens, fewer than one batch of "
                f"{c.batch_size}: lower batch_size (or max_tokens)"
            )
        self.validation = ValidationSet.of(self) if c.val else None
        self.sampler = BucketBatchSampler(
            dataset.lengths, c.batch_size, seed=c.seed, rank=self.world.rank, world_size=self.world.size,
            micro_batches=c.micro_batches,
        )  # fmt: skip
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id),
            num_workers=c.num_workers,
            generator=torch.Generator(),  # the global RNG stays untouched: resuming replays it exactly
        )

        self.model = self._trainable(llm)
        self.letter_ctc = None
        if c.ctc_weight:
            self.letter_ctc = LetterCTC.attached(self.model, self.tokenizer, self.speech.config.vocab_size, c.adapter)
        self.quiet = self._quiet_directions(conversations) if c.lora_quiet else None
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in self.parameters)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, c.warmup_steps, c.max_steps, c.decay_steps)
        self.metrics = MetricsLog(self.run_dir, enabled=self.world.is_main)
        self.step = 0
        state = self.checkpoints.latest() if self.resume else None
        if state is not None:
            self._load_state(state)
        if self.world.is_main:
            print(
                f"{self.name}: {kept} conversations in {len(dataset)} rows of ≤ {c.max_tokens} tokens, "
                f"{trainable:,} trainable parameters, {self.world.size} process(es) on {self.world.device}"
                + (f"; resuming at step {self.step}" if self.step else ""),
                flush=True,
            )

    def _trainable(self, llm: PreTrainedModel) -> torch.nn.Module:
        """The LLM with what trains marked (and wrapped by peft), on the device, sharded over ranks."""
        c = self.config
        self.widening = None
        if c.adapter and not c.full:
            self._check_adapter(Path(c.adapter))
        if c.widen_dims or is_widened(c.adapter):
            first_sound = len(self.tokenizer) - len(sound_vocabulary(self.speech.config.vocab_size))
            model, self.widening = widened_llm(llm, first_sound, c)
        elif c.full:
            model = llm.requires_grad_(True)
        elif c.adapter:
            model = self._continued(llm, Path(c.adapter))
        else:
            from peft import LoraConfig, get_peft_model

            sound_ids = self.tokenizer.convert_tokens_to_ids(sound_vocabulary(self.speech.config.vocab_size))
            names = {id(module): name.rsplit(".", 1)[-1] for name, module in llm.named_modules()}
            rows = {names[id(llm.get_input_embeddings())]: sound_ids}
            output = llm.get_output_embeddings()
            if output is not None and output.weight is not llm.get_input_embeddings().weight:
                rows[names[id(output)]] = sound_ids  # untied: the output rows train too (tied ones follow peft)
            lora = LoraConfig(
                r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, target_modules=c.lora_targets,
                trainable_token_indices=rows,
            )  # fmt: skip
            try:
                model = get_peft_model(llm, lora)
            except ValueError as e:
                raise ConfigError(f"lora_targets {c.lora_targets}: {e}") from e
        model = model.to(self.world.device).train()
        if self.world.size > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # on the world's device: FSDP2's default mesh is CUDA whenever there is a GPU, even for a CPU run
            mesh = init_device_mesh(self.world.device.type, (self.world.size,))
            blocks = set(getattr(llm, "_no_split_modules", None) or ())  # transformers names its decoder layers
            for module in model.modules():
                if type(module).__name__ in blocks:
                    fully_shard(module, mesh=mesh)
            fully_shard(model, mesh=mesh)
        return model

    def _quiet_directions(self, conversations: list[Conversation | Distilled]) -> dict[str, torch.Tensor]:
        """lora_quiet: each LoRA layer's quiet input directions, measured on typed pairs of the data's replies, and
        the LoRA confined to them from the start (measured again on resume: the same data gives the same)."""
        if self.config.full or not 0 < self.config.lora_quiet < 1:
            raise ConfigError(f"lora_quiet={self.config.lora_quiet}: a share of directions in (0, 1), with LoRA")
        replies = [
            message["content"]
            for item in conversations
            for message in (item.student if isinstance(item, Distilled) else item)
            if message["role"] == "assistant" and isinstance(message["content"], str)
        ]
        if len(replies) < 2:
            raise ConfigError("lora_quiet: the data has fewer than 2 replies to measure typed text on")
        quiet = quiet_directions(self.model, self.tokenizer, reply_pairs(replies), self.config.lora_quiet)
        confine(self.model, quiet)
        return quiet

    def _check_adapter(self, adapter: Path) -> None:
        """Refuse an adapter= not written by `auralm train`, or trained on another speech tokenizer's codes."""
        sound = adapter / SOUND_TOKENS_FILE
        if not sound.is_file():
            raise ConfigError(f"adapter={adapter}: no {SOUND_TOKENS_FILE}; give an adapter `auralm train` wrote")
        recorded = json.loads(sound.read_text()).get(HASH_KEY)
        if recorded != self.speech.tokenizer_hash and not self.config.allow_mismatch:
            raise ConfigError(
                f"adapter={adapter}: trained on another speech tokenizer's codes ({str(recorded)[:12]}…); "
                "allow_mismatch=true goes on from it all the same (for a tokenizer fine-tuned from that one)"
            )

    def _continued(self, llm: PreTrainedModel, adapter: Path) -> torch.nn.Module:
        """The LLM with an earlier run's adapter (LoRA + sound rows), trainable, so one adapter holds every stage."""
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(llm, adapter, is_trainable=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ConfigError(f"adapter={adapter}: does not fit llm={self.config.llm} ({e})") from e

    # ---- training --------------------------------------------------------------------------

    def train(self) -> None:
        c = self.config
        stopper = Stopper(c.max_minutes, c.save_every_minutes)
        window = LogWindow()
        data = iter(self.loader)
        bar = tqdm(total=c.max_steps, initial=self.step, desc=f"train {self.name}", disable=not self.progress)
        try:
            while self.step < c.max_steps and not stopper.stop_everywhere(self.world):
                self.optimizer.zero_grad(set_to_none=True)
                batches = []
                for _ in range(c.micro_batches):
                    batch, data = next_batch(data, self.loader)
                    batches.append(batch)
                counts = [sum(int((b.targets != IGNORE).sum()) for b in batches), sum(b.ids.numel() for b in batches)]
                targets, tokens = self.world.sum(torch.tensor(counts, dtype=torch.float, device=self.world.device))
                loss = 0.0
                for micro, batch in enumerate(batches):
                    if self.world.size > 1:  # FSDP2 reduces gradients after the last micro-batch only
                        self.model.set_requires_gradient_sync(micro == len(batches) - 1)
                    loss_sum = self.loss_sum(batch)
                    # FSDP2 averages gradients over ranks: × world size makes the loss per global target token
                    (loss_sum * self.world.size / targets).backward()
                    loss += float(self.world.sum(loss_sum.detach()) / targets)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, c.grad_clip)
                if isinstance(grad_norm, DTensor):
                    grad_norm = grad_norm.full_tensor()
                self.optimizer.step()
                if self.quiet:
                    confine(self.model, self.quiet)
                self.scheduler.step()
                self.sampler.advance()
                self.step += 1
                bar.update()
                window.add({"loss": loss, "target_tokens": float(targets), "tokens": float(tokens)})
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    speed = window.per_second("tokens")
                    means = window.means()
                    row = {
                        "loss": means["loss"],
                        "target_tokens": means["target_tokens"],
                        "tokens_per_second": speed,
                        "grad_norm": float(grad_norm),
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    self.metrics.write(self.step, row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{speed:.0f}")
                if self.validation and (self.step % c.val_every == 0 or self.step == c.max_steps):
                    self._validate()
                if self.step % c.save_every == 0 or stopper.save_due():
                    self.save_checkpoint()
                    stopper.saved()
        finally:
            bar.close()
            stopper.close()
        self.save_checkpoint()
        if c.merge and not c.full and self.step == c.max_steps:
            self.save_merged()
        if stopper.signal:
            print(f"stopped by {stopper.signal} at step {self.step}; --resume goes on from here", flush=True)
        elif self.step < c.max_steps:
            print(f"stopped after {c.max_minutes} minutes at step {self.step}; --resume goes on from here", flush=True)

    def _validate(self) -> None:
        """Log the loss per target token on the validation set (dropout off), and with letter CTC the word error
        rate of what its head reads off the clips (is the LLM's state of each sound position phonetic yet?)."""
        self.model.eval()
        heard = []  # with letter CTC: (transcript, the head's reading) per clip

        def loss_and_reading(batch: TokenBatch) -> torch.Tensor:
            loss = self.loss_sum(batch)
            if self.letter_ctc is not None:
                heard.extend(zip(*self.letter_ctc.read(self._hidden, batch), strict=True))
            return loss

        try:
            values = {"val_loss": self.validation.loss(loss_and_reading)}
            if heard:
                values["val_letter_wer"] = corpus_word_error_rate(*zip(*heard, strict=True))
            self.metrics.write(self.step, values)
        finally:
            self.model.train()

    def loss_sum(self, batch: TokenBatch | DistillBatch) -> torch.Tensor:
        """One micro-batch's loss summed over its target tokens (the step divides by the global count):
        cross-entropy, or for distilled conversations KL(teacher ‖ student) at kl_temperature T, scaled by T²
        (Hinton's factor, so the gradients keep their size whatever T), where the teacher is the LLM without the
        adapter reading the teacher's rows (Ultravox's `_compute_kl_loss`, for discrete sound tokens), plus
        `reply_ce_weight` × the cross-entropy of the reply's tokens (sequence-level distillation, Kim and Rush):
        the softened KL alone let a CPU-sized run drift to replies that ignore the clip (RESULTS.md)."""
        if isinstance(batch, DistillBatch):
            # a widened LLM reads text as the base LLM does: it is its own teacher
            with torch.no_grad(), nullcontext() if self.widening else self.model.disable_adapter():
                teacher = self._target_logits(batch.teacher)  # (N, vocab)
            logits = self._target_logits(batch.student)  # (N, vocab)
            t = self.config.kl_temperature
            student, teacher = F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher / t, dim=-1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="sum") * t * t
            if not self.config.reply_ce_weight:
                return kl
            return kl + self.config.reply_ce_weight * self._cross_entropy(logits, batch.student)
        loss = self._cross_entropy(self._target_logits(batch), batch)
        if self.letter_ctc is not None and self.model.training:
            loss = loss + self.config.ctc_weight * self.letter_ctc.loss_sum(self._hidden, batch)
        return loss

    def _cross_entropy(self, logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """The summed cross-entropy of (N, vocab) logits at the batch's target positions."""
        targets = batch.targets.to(self.world.device)
        return F.cross_entropy(logits, targets[targets != IGNORE], reduction="sum")

    def _target_logits(self, batch: TokenBatch) -> torch.Tensor:
        """(N, vocab) float32 logits at the batch's N target positions, in row order.

        The output head sees only those N positions (a tenth of a packed row, and a fifth of SmolLM2-135M's
        compute per position is its 49k-word head), not all B × L."""
        device = self.world.device
        ids, targets, positions = batch.ids.to(device), batch.targets.to(device), batch.positions.to(device)
        learned = targets != IGNORE  # (B, L)
        head = self.model.get_output_embeddings()

        def only_learned(_head: torch.nn.Module, args: tuple) -> tuple:
            if self.letter_ctc is not None:
                self._hidden = args[0]  # (B, L, d), what letter CTC reads
            return (args[0][learned], *args[1:])

        hook = head.register_forward_pre_hook(only_learned)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                # no attention mask and no cache: transformers then reads the packing from the position ids
                logits = self.model(input_ids=ids, position_ids=positions, use_cache=False).logits  # (N, vocab)
        finally:
            hook.remove()
        return logits.float()

    # ---- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Everything a resumed run needs, and the model as it stands now (rank 0 writes; all ranks gather)."""
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        )
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=full)
        rng = self.world.gather(capture_rng())  # each rank's own (LoRA dropout draws differently per rank)
        if self.world.is_main:
            state = {
                "step": self.step,
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "skipped": self.skipped.state_dict(),
                "rng": rng,
                "config": config_dict(self.config),
            }
            self.checkpoints.save(self.step, state)
            self._save_model(model_state)
        self.world.barrier()

    def _load_state(self, state: dict) -> None:
        try:
            loaded = set_model_state_dict(
                self.model, state["model"], options=StateDictOptions(full_state_dict=True, strict=False)
            )
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"the checkpoint does not fit this run's model ({e}); resume with its settings"
            ) from e
        if loaded.unexpected_keys:
            raise CheckpointError(
                f"the checkpoint holds weights this run does not train ({loaded.unexpected_keys[0]}, …); "
                "resume with the settings it was saved with (full, lora_*)"
            )
        set_optimizer_state_dict(
            self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.skipped.load_state_dict(state["skipped"])
        restore_rng(state["rng"][self.world.rank % len(state["rng"])])
        self.step = state["step"]

    def _save_model(self, model_state: dict[str, torch.Tensor]) -> None:
        """output_dir/adapter/ (LoRA) or output_dir/merged/ (full), replaced whole: written beside, then renamed."""
        folder = self.run_dir / ("merged" if self.config.full else "adapter")
        model_state = {k: v for k, v in model_state.items() if not k.startswith("letter_ctc.")}  # training's only
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        if self.config.full:
            self.model.save_pretrained(partial, state_dict=model_state)
        else:
            if self.widening:
                save_widening(widened_parts(self.model, model_state), self.widening, partial)
            else:  # the sound rows travel as trainable tokens; no whole embedding matrices
                self.model.save_pretrained(partial, state_dict=model_state, save_embedding_layers=False)
            sound = {HASH_KEY: self.speech.tokenizer_hash, CODES_KEY: self.speech.config.vocab_size}
            (partial / SOUND_TOKENS_FILE).write_text(json.dumps(sound, indent=2) + "\n")
        self.tokenizer.save_pretrained(partial)
        if self.letter_ctc is not None:
            self.letter_ctc.save(partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)

    def save_merged(self) -> None:
        """output_dir/merged/: the LLM with the adapter merged, loaded the way users load it."""
        if self.world.is_main:
            shutil.rmtree(self.run_dir / "merged", ignore_errors=True)  # an earlier merge of this run
            merge_speech_llm(self.config.llm, self.run_dir / "adapter", out=self.run_dir / "merged")
        self.world.barrier()

    def cleanup(self) -> None:
        output = self.run_dir / ("merged" if self.config.full else "adapter")
        end_run(self.name, output, self.step, self.skipped, self.metrics, self.world)

    @property
    def progress(self) -> bool:
        return shows_progress(self.config, self.world)
