"""The export job behind `auralm export`: a dataset's audio → sound codes in Parquet shards (or JSONL token
strings; the folder's format is `export.py`'s), resumable, over any number of processes.

    export_dataset("clips/", "tokens/", tokenizer)       # a folder of audio, a manifest, a datasets folder, Parquet
    for row in export_rows("tokens/"): …                 # export.py: id, source, duration_s, codes, n_tokens, text
    torchrun --nproc_per_node 4 -m auralm export clips/ --out tokens/     # each rank its shards

Shard k holds inputs k·S … (k+1)·S − 1 (S = shard_size, in input order), so the layout does not depend on the
number of processes: rank r of N does shards r, r + N, …. A shard is written under a temporary name, renamed,
then recorded in its rank's ledger; a shard not in a ledger is (re)done. So a kill at any moment costs only the
shards in flight, and the same command run again finishes with every input exactly once. `retry_failed` (the
command's --retry-failed) does the shards holding inputs that failed once more, all of their inputs, and records
them again (`_Shard.attempt` orders a shard's records).

Decoding runs in DataLoader workers; log-mels too on a CPU, while on a GPU the workers hand over 16 kHz audio
(pinned, copied while the GPU works) and the log-mels are made there, as `SpeechTokenizer.encode` makes them, so a
GPU's export and per-file codes read the same log-mels. The encoder always sees whole windows (short clips are padded,
as Ichigo pads them, so codes do not depend on what shares a batch), so batches are filled with windows, not
clips, and need no length bucketing: a long file's windows spread over batches.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from auralm.data.examples import ArrowAudio, DataError, Example
from auralm.data.export import EXPORT_FILE, FORMAT, FORMAT_VERSION, FORMATS, JOB_FILE, write_shard
from auralm.data.readers import read_examples
from auralm.distributed import World
from auralm.errors import AuralmError
from auralm.files import write_text_atomically
from auralm.tokenizer import SAMPLE_RATE, SpeechTokenizer, TokenizerConfig, load_audio
from auralm.tokenizer.speech_tokenizer import window_mels

ERRORS_FILE, LEDGER_DIR = "errors.jsonl", "progress"
DEFAULT_SHARD_SIZE = 1000


class ExportError(AuralmError):
    """An export that cannot start or finish; the message names the folder and what to do."""


@dataclass
class ExportSummary:
    """What an export (this run and the ones before it) did."""

    out: Path
    inputs: int
    exported: int
    failed: int
    audio_seconds: float  # of the inputs exported
    shards: int
    run_seconds: float = 0.0  # this run's wall time
    run_audio_seconds: float = 0.0  # audio this run encoded (less than audio_seconds when it resumed)
    resumed_shards: int = 0  # shards earlier runs had finished

    def __str__(self) -> str:
        speed = self.run_audio_seconds / self.run_seconds if self.run_seconds else 0.0
        text = (
            f"exported {self.exported:,} of {self.inputs:,} inputs ({self.audio_seconds / 3600:.2f} h of audio) "
            f"in {self.shards} shard{'s' * (self.shards != 1)} to {self.out}"
        )
        if self.resumed_shards:
            one = self.resumed_shards == 1
            text += f"; {self.resumed_shards} shard{'' if one else 's'} {'was' if one else 'were'} done before this run"
        if self.run_audio_seconds:
            text += (
                f"; this run: {self.run_audio_seconds / 3600:.2f} h in {self.run_seconds:.1f} s, {speed:.0f}× real time"
            )
        if self.failed:
            text += f"; {self.failed} failed (see {self.out / ERRORS_FILE})"
        return text


@dataclass
class _Shard:
    """A finished shard as its ledger line records it."""

    shard: int
    file: str | None  # None when none of its inputs could be used
    rows: int
    seconds: float
    errors: list[dict[str, str]] = field(default_factory=list)  # {"index", "id", "source", "reason"}
    attempt: int = 0  # how often it was done again (retry_failed); the latest record counts


def export_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: SpeechTokenizer,
    *,
    world: World | None = None,
    fmt: str = "parquet",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 16,
    num_workers: int = 2,
    max_seconds: float = 3600.0,
    audio_column: str = "audio",
    text_column: str = "text",
    progress: bool = True,
    retry_failed: bool = False,
    mels_on_device: bool | None = None,
) -> ExportSummary:
    """Export the sound codes of every input of `source` (see `auralm.data.read_examples`) into `out`.

    world: this process's rank among those exporting together (default: a world of one on the tokenizer's device).
    batch_size: windows encoded together; num_workers: DataLoader processes that decode audio.
    max_seconds: longer inputs are left out (errors.jsonl) before they are decoded.
    retry_failed: do the shards with inputs that failed (errors.jsonl) again, in an export begun or finished before.
    mels_on_device: log-mels made on the tokenizer's device rather than in the workers (None: on a GPU).
    Returns the summary (every rank returns the same counts once all have finished).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    world = world or World(0, 1, tokenizer.device)
    started = time.perf_counter()
    out = Path(out)
    try:
        examples = read_examples(source, audio_column=audio_column, text_column=text_column, require_text=False)
    except DataError as e:
        raise ExportError(str(e)) from None
    job = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input": str(Path(source).resolve()),
        "inputs": len(examples),
        "shard_size": shard_size,
        "output_format": fmt,
        "max_seconds": max_seconds,
        "tokenizer_hash": tokenizer.tokenizer_hash,
    }
    _start_job(out, job, world)
    n_shards = -(-len(examples) // shard_size)
    mine, retried, resumed = _shards_to_do(out, n_shards, world, retry_failed)
    if mels_on_device is None:
        mels_on_device = tokenizer.device.type != "cpu"
    reader = _ClipReader(examples, tokenizer.config, max_seconds, str(source), mels_in_workers=not mels_on_device)
    todo_seconds = sum(examples[i].seconds or 0.0 for k in mine for i in _shard_range(k, shard_size, len(examples)))
    bar = tqdm(
        total=round(todo_seconds / 3600, 4),
        desc=f"export (rank {world.rank} of {world.size})" if world.size > 1 else "export",
        unit="h",
        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h of audio [{elapsed}<{remaining}{postfix}]",
        disable=not progress or not mine or not world.is_main,
        file=sys.stderr,
    )
    run_audio = 0.0
    shards = [list(_shard_range(k, shard_size, len(examples))) for k in mine]
    encoded = _encode_shards(reader, shards, tokenizer, batch_size, num_workers, bar)
    with bar, _Ledger(out / LEDGER_DIR / f"rank-{world.rank}.jsonl") as ledger:
        for k, (rows, errors) in zip(mine, encoded, strict=True):
            name = f"shard-{k:05d}-of-{n_shards:05d}.{fmt}" if rows else None
            if name:
                write_shard(out / name, rows, fmt, tokenizer.config)
            elif k in retried and retried[k].file:  # every input failed this time: no shard left behind
                (out / retried[k].file).unlink(missing_ok=True)
            seconds = sum(r["duration_s"] for r in rows)
            attempt = retried[k].attempt + 1 if k in retried else 0
            ledger.record(_Shard(k, name, len(rows), seconds, errors, attempt))
            run_audio += seconds
    world.barrier()
    summary = _finish(out, job, examples, tokenizer, n_shards, world)
    summary.run_seconds, summary.resumed_shards = time.perf_counter() - started, resumed
    summary.run_audio_seconds = sum(float(s) for s in world.gather(run_audio))
    return summary


def _shards_to_do(
    out: Path, n_shards: int, world: World, retry_failed: bool
) -> tuple[list[int], dict[int, _Shard], int]:
    """This rank's shards to do: those not recorded, and with retry_failed those that hold failed inputs (their
    records, by shard); and how many shards earlier runs finished (and this one keeps)."""
    done = _read_ledgers(out)
    failed = {k: shard for k, shard in done.items() if shard.errors} if retry_failed else {}
    if failed and world.is_main:
        (out / EXPORT_FILE).unlink(missing_ok=True)  # complete again once the shards done again are
    retried = {k: shard for k, shard in failed.items() if k % world.size == world.rank}
    mine = [k for k in range(world.rank, n_shards, world.size) if k not in done or k in retried]
    return mine, retried, len(done) - len(failed)


# ---- reading and encoding -----------------------------------------------------------------------------------


class _ClipReader(Dataset):
    """Input i → (i, log-mels of its windows (W, n_mels, frames), codes per window, seconds, error or None), or with
    mels_in_workers=False (i, its 16 kHz audio (samples,), None, seconds, error or None). Runs in DataLoader workers."""

    def __init__(
        self, examples: list[Example], config: TokenizerConfig, max_seconds: float, input: str, mels_in_workers: bool
    ):
        self.examples, self.config, self.max_seconds, self.input = examples, config, max_seconds, input
        self.mels_in_workers = mels_in_workers

    def source(self, example: Example) -> str:
        """Where an input came from: its file, or its row of a datasets folder or Parquet files."""
        return example.audio if isinstance(example.audio, str) else f"{self.input}[{example.audio.row}]"

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        example = self.examples[index]
        try:
            source = example.audio.read() if isinstance(example.audio, ArrowAudio) else example.audio
            audio = load_audio(source, name=self.source(example), max_seconds=self.max_seconds)
        except (AuralmError, OSError) as e:
            return index, None, None, 0.0, str(e)
        if not self.mels_in_workers:
            return index, audio, None, len(audio) / SAMPLE_RATE, None
        mels, counts = window_mels(audio, self.config)
        return index, mels, counts, len(audio) / SAMPLE_RATE, None


def _encode_shards(
    reader: _ClipReader,
    shards: list[list[int]],
    tokenizer: SpeechTokenizer,
    batch_size: int,
    num_workers: int,
    bar: tqdm,
) -> Iterator[tuple[list[dict], list[dict[str, str]]]]:
    """For each shard (its inputs' indices), its rows in input order and the inputs that failed.
    One DataLoader reads all of them, so its workers keep decoding ahead across shard boundaries."""
    loader = DataLoader(
        Subset(reader, [i for indices in shards for i in indices]),
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        pin_memory=tokenizer.device.type == "cuda",  # so the copies below overlap the encoder's work
    )
    items = iter(loader)
    for indices in shards:
        yield _encode_items(itertools.islice(items, len(indices)), reader, tokenizer, batch_size, bar)


def _encode_items(
    items: Iterator, reader: _ClipReader, tokenizer: SpeechTokenizer, batch_size: int, bar: tqdm
) -> tuple[list[dict], list[dict[str, str]]]:
    """The rows (in input order) and errors of `_ClipReader` items; their windows are encoded in batches."""
    pieces: dict[int, list[torch.Tensor | None]] = {}
    seconds: dict[int, float] = {}
    errors = []
    pending: list[tuple[int, int, torch.Tensor, int]] = []  # (input, window number, mel, codes kept)

    def encode(windows: list[tuple[int, int, torch.Tensor, int]]) -> None:
        codes = tokenizer.encode_windows(torch.stack([mel for _, _, mel, _ in windows])).cpu()
        for (index, number, _, kept), window_codes in zip(windows, codes, strict=True):
            pieces[index][number] = window_codes[:kept]

    for index, mels, counts, length, error in items:
        example = reader.examples[index]
        if error is not None:
            errors.append({"index": index, "id": example.id, "source": reader.source(example), "reason": error})
            continue
        if counts is None:  # the clip's audio: its log-mels are made on the encoder's device
            mels, counts = window_mels(mels.to(tokenizer.device, non_blocking=True), reader.config)
        pieces[index], seconds[index] = [None] * len(counts), length
        pending += [(index, n, mel, kept) for n, (mel, kept) in enumerate(zip(mels, counts, strict=True))]
        while len(pending) >= batch_size:
            encode(pending[:batch_size])
            pending = pending[batch_size:]
        bar.update(round(length / 3600, 6))
        if elapsed := bar.format_dict["elapsed"]:
            bar.set_postfix_str(f"{bar.n / elapsed:.4f} h/s, {bar.n * 3600 / elapsed:.0f}× real time", refresh=False)
    if pending:
        encode(pending)
    rows = []
    for index in sorted(pieces):
        example, codes = reader.examples[index], torch.cat(pieces[index])
        rows.append(
            {
                "id": example.id,
                "source": reader.source(example),
                "duration_s": round(seconds[index], 4),
                "codes": codes,
                "n_tokens": len(codes),
                "text": example.text,
            }
        )
    return rows, errors


def _shard_range(k: int, shard_size: int, total: int) -> range:
    return range(k * shard_size, min((k + 1) * shard_size, total))


# ---- the output folder --------------------------------------------------------------------------------------


def _start_job(out: Path, job: dict, world: World) -> None:
    """Create `out` with job.json, or check that it holds this very job (a rerun resumes it)."""
    found = out / JOB_FILE
    if found.is_file():
        earlier = json.loads(found.read_text())
        changed = [
            k for k in job if earlier.get(k) != job[k] and not (k == "input" and _same_input(earlier[k], job[k]))
        ]
        if changed:
            raise ExportError(
                f"{out} holds another export (its {' and '.join(changed)} "
                f"{'differs' if len(changed) == 1 else 'differ'}); rerun with the same input and settings "
                "to resume it, or choose another --out"
            )
    elif out.is_file() or (out.is_dir() and any(not p.name.endswith(".partial") for p in out.iterdir())):
        raise ExportError(f"{out} is not empty and holds no export; choose another --out")
    world.barrier()  # every rank has checked before rank 0 writes
    if world.is_main and not found.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(found, json.dumps(job, indent=2) + "\n")
    world.barrier()


def _same_input(recorded: str, given: str) -> bool:
    """Whether job.json's input is the one given (resolved): an absolute path from any folder, or as earlier
    auralm versions wrote it (absolute, unresolved: `..` in it; or relative, to the folder the command ran in)."""
    return Path(recorded).resolve() == Path(given).resolve()


def _read_ledgers(out: Path) -> dict[int, _Shard]:
    """Every shard any rank has recorded as finished, as its latest attempt left it (a line cut short by a kill is
    not a record)."""
    done: dict[int, _Shard] = {}
    for ledger in sorted((out / LEDGER_DIR).glob("rank-*.jsonl")):
        for line in ledger.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                shard = _Shard(**json.loads(line))
                if shard.shard not in done or shard.attempt >= done[shard.shard].attempt:
                    done[shard.shard] = shard
    return done


class _Ledger:
    """This rank's ledger, appended to (and fsynced) after each shard it finishes."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _Ledger:
        self.path.parent.mkdir(exist_ok=True)
        text = self.path.read_text() if self.path.exists() else ""
        if not text.endswith("\n") and text:  # a kill cut the last line short: drop it
            self.path.write_text(text[: text.rfind("\n") + 1])
        self.file = self.path.open("a")
        return self

    def record(self, shard: _Shard) -> None:
        self.file.write(json.dumps(asdict(shard)) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, *exc) -> None:
        self.file.close()


def _finish(
    out: Path, job: dict, examples: list[Example], tokenizer: SpeechTokenizer, n_shards: int, world: World
) -> ExportSummary:
    """Rank 0, once every rank is done: errors.jsonl and export.json. Every rank returns the summary."""
    done = _read_ledgers(out)
    missing = sorted(set(range(n_shards)) - done.keys())
    if missing:
        raise ExportError(f"{out}: shards {missing[:5]} were not finished; run the same command again")
    errors = sorted((e for s in done.values() for e in s.errors), key=lambda e: e["index"])
    summary = ExportSummary(
        out=out,
        inputs=len(examples),
        exported=sum(s.rows for s in done.values()),
        failed=len(errors),
        audio_seconds=sum(s.seconds for s in done.values()),
        shards=sum(1 for s in done.values() if s.file),
    )
    if world.is_main:
        write_text_atomically(out / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors))
        info = {
            **job,
            "tokenizer": tokenizer.config.to_dict(),
            "codes_per_second": tokenizer.config.codes_per_second,
            "rows": summary.exported,
            "failed": summary.failed,
            "audio_hours": round(summary.audio_seconds / 3600, 4),
            "shards": sorted(s.file for s in done.values() if s.file),
        }
        write_text_atomically(out / EXPORT_FILE, json.dumps(info, indent=2) + "\n")
    world.barrier()
    return summary
