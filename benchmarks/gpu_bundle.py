"""The larger-compute path: a training run prepared here, carried to a lent GPU machine in pieces, and its adapter
brought back. That machine has torch, transformers and peft but no network, and receives at most 64 MiB a call;
what comes back is files of at most 16 MB.

    # here: the training codes and texts as an export, then the bundle (.bundle/, git-ignored)
    auralm export data/speech-v2/train.jsonl --out runs/export-train --format jsonl --checkpoint runs/tok/tokenizer
    python benchmarks/gpu_bundle.py make --recipe distill --export runs/export-train --tokenizer runs/tok/tokenizer \
        [--replies runs/distill/teacher_replies.json] [--adapter runs/pretrain/adapter] [KEY=VALUE ...]
    # it prints the device calls: the parts of the base LLM over consecutive calls, then
    run(command="bash benchmarks/gpu_train.sh", carry=[".whl", ".bundle/…"], timeout_s=600)
    # back here: the adapter from the files the call brought back
    python benchmarks/gpu_bundle.py join FILES_AT runs/gpu-distill

The bundle: the speech tokenizer folder and its Whisper backbone (an openai-whisper .pt: the weights packages are
too large to carry, and the tokenizer's hash, which the adapter records, covers the encoder), the export (JSONL
shards, as the GPU image may lack pyarrow, in one .tar.gz: token strings compress about 8×), optional teacher
replies (else the GPU asks the LLM for them, which it does fast) and an adapter to go on from, the recipe and its
settings (recipe.txt), and the base LLM's GGUF; the two large files go in parts of at most PART_MB. SHA256SUMS
covers every file and the joined ones, and `verify` checks them all on arrival. Nothing here needs a GPU:
`gpu_train.sh --dry-run` runs the same steps on this CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

PART_MB = 28  # a carried piece: two fit in one call's 64 MiB beside the rest
RESULT_MB = 16  # the largest file a call brings back (sent in parts of 90 % of it: MB or MiB, either way)
CALL_MB = 60  # what one call may carry, with room for the tracked tree's small changes
SUMS = "SHA256SUMS"
GGUF, WHISPER = "llm.gguf", "whisper.pt"  # made from parts on arrival
EXPORT = "export"  # carried as export.tar.gz, unpacked on arrival


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def split(path: Path, into: Path, part_mb: float) -> list[Path]:
    """`path` cut into `into`/NAME.part-000, -001, … of at most `part_mb` MB each, in order."""
    size, parts = int(part_mb * 2**20), []
    with path.open("rb") as f:
        while chunk := f.read(size):
            parts.append(into / f"{path.name}.part-{len(parts):03d}")
            parts[-1].write_bytes(chunk)
    return parts


def write_sums(folder: Path, extra: dict[str, str] | None = None) -> None:
    """SHA256SUMS (sha256sum's format) of every file below `folder`, and of `extra` (name → digest) files that
    are made from parts on arrival."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS)
    lines = [f"{sha256(p)}  {p.relative_to(folder)}" for p in files]
    lines += [f"{digest}  {name}" for name, digest in sorted((extra or {}).items())]
    (folder / SUMS).write_text("\n".join(lines) + "\n")


def verify(folder: Path) -> None:
    """Join every NAME.part-NNN set into NAME, then check every file SHA256SUMS names (SystemExit naming the first
    file missing or changed); a bundle's export.tar.gz is then unpacked into export/."""
    parts: dict[str, list[Path]] = {}
    for part in sorted(folder.glob("*.part-*")):
        parts.setdefault(part.name.rsplit(".part-", 1)[0], []).append(part)
    for name, pieces in parts.items():
        with (folder / name).open("wb") as joined:
            for piece in pieces:
                joined.write(piece.read_bytes())
    for line in (folder / SUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"{path}: missing; carry every part of the bundle (gpu_bundle.py make lists them)")
        if sha256(path) != digest:
            raise SystemExit(f"{path}: changed on the way (sha256 differs); carry it again")
    if (archive := folder / f"{EXPORT}.tar.gz").is_file():  # a bundle's, not a result's
        shutil.rmtree(folder / EXPORT, ignore_errors=True)
        shutil.unpack_archive(archive, folder / EXPORT)
    print(f"{folder}: {len(parts)} file(s) joined from parts; every file's sha256 checks")


def make(args: argparse.Namespace) -> None:
    from auralm.lm.loading import default_gguf

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(args.tokenizer, out / "tokenizer")
    shutil.make_archive(str(out / EXPORT), "gztar", root_dir=args.export)  # token strings shrink ~8x
    if args.replies:
        shutil.copy(args.replies, out / "teacher_replies.json")
    if args.adapter:
        shutil.copytree(args.adapter, out / "adapter")
    (out / "recipe.txt").write_text("\n".join([args.recipe, *args.settings]) + "\n")
    whole = {}
    for name, source in ((GGUF, Path(args.llm) if args.llm else default_gguf()), (WHISPER, None)):
        staged = out / f".{name}"
        if source is None:
            save_whisper(args.tokenizer, staged)
        else:
            shutil.copy(source, staged)
        whole[name] = sha256(staged)
        for part in split(staged, out, args.part_mb):
            part.rename(part.with_name(part.name.removeprefix(".")))
        staged.unlink()
    write_sums(out, whole)
    print_calls(out)


def save_whisper(tokenizer: str, path: Path) -> None:
    """The tokenizer's Whisper backbone as an openai-whisper checkpoint: in float16 when that loses nothing (the
    packaged weights are float16), so the tokenizer's hash is the same where it loads."""
    import dataclasses

    import torch

    from auralm.tokenizer import SpeechTokenizer

    whisper = SpeechTokenizer.from_pretrained(tokenizer).whisper
    state = whisper.state_dict()
    if all(torch.equal(v.half().to(v.dtype), v) for v in state.values() if v.is_floating_point()):
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"dims": dataclasses.asdict(whisper.dims), "model_state_dict": state}, path)


def print_calls(out: Path) -> None:
    """The device calls that carry the bundle: parts of the LLM first, the rest with the last of them."""
    pieces = sorted(out.glob("*.part-*"))
    rest = [p for p in sorted(out.iterdir()) if p not in pieces]
    rest_mb = sum(f.stat().st_size for p in rest for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    calls, current, current_mb = [], [], rest_mb / 2**20 + 3  # .whl (~3 MB of wheels) goes in the last call
    for piece in reversed(pieces):  # the last call carries the rest: fill it first
        mb = piece.stat().st_size / 2**20
        if current and current_mb + mb >= CALL_MB:
            calls.append(current)
            current, current_mb = [], 0.0
        current.append(piece)
        current_mb += mb
    calls.append(current)
    calls.reverse()
    print(f"{out}: {len(pieces)} part(s) of the LLM and Whisper + {rest_mb / 2**20:.1f} MB, in {len(calls)} call(s):")
    for number, call in enumerate(calls, 1):
        carry = [str(p) for p in call] + ([".whl", *map(str, rest)] if number == len(calls) else [])
        command = "bash benchmarks/gpu_train.sh" if number == len(calls) else "true"
        print(f"  {number}. run(command={command!r}, carry={json.dumps(carry)}, timeout_s=600)")


def pack_result(run: Path, out: Path) -> None:
    """The run's adapter and metrics into `out`, each file in parts of at most RESULT_MB, with SHA256SUMS."""
    out.mkdir(parents=True, exist_ok=True)
    whole = {}  # the digests of files sent in parts, checked once joined
    files = [*sorted((run / "adapter").iterdir()), run / "metrics.jsonl", run / "teacher_replies.json"]
    part_mb = 0.9 * RESULT_MB
    for path in filter(Path.is_file, files):
        if path.stat().st_size > part_mb * 2**20:
            split(path, out, part_mb)
            whole[path.name] = sha256(path)
        else:
            shutil.copy(path, out / path.name)
    write_sums(out, whole)


def join(result: Path, into: Path) -> None:
    """A result brought back (`pack_result`'s files) as an adapter folder in `into`/adapter (checked)."""
    work = into / ".result"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(result, work)
    for path in work.iterdir():  # files brought back are read-only; the copies must be writable to be joined
        path.chmod(0o644)
    verify(work)
    adapter = into / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    adapter.mkdir(parents=True)
    for path in work.iterdir():
        if ".part-" not in path.name and path.name != SUMS:
            run_file = path.name in ("metrics.jsonl", "teacher_replies.json")
            shutil.move(path, (into if run_file else adapter) / path.name)
    shutil.rmtree(work)
    print(f"{adapter}: the adapter the GPU trained")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    jobs = parser.add_subparsers(dest="job", required=True)
    made = jobs.add_parser("make", help="prepare .bundle/ here")
    made.add_argument("--recipe", required=True, choices=("pretrain", "distill"), help="the LLM recipe to run there")
    made.add_argument("--export", required=True, help="the training codes and texts: an `auralm export --format jsonl`")
    made.add_argument("--tokenizer", required=True, help="the speech tokenizer folder the export was made with")
    made.add_argument("--replies", help="teacher_replies.json of an earlier distill run (else asked for there)")
    made.add_argument("--adapter", help="an adapter to go on training")
    made.add_argument("--llm", help="the base LLM's .gguf (default: the packaged SmolLM2-135M-Instruct)")
    made.add_argument("--part-mb", type=float, default=PART_MB)
    made.add_argument("--out", default=".bundle")
    made.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="the recipe's settings (auralm train …)")
    checked = jobs.add_parser("verify", help="there: join the parts and check every file's sha256")
    checked.add_argument("folder", type=Path)
    packed = jobs.add_parser("pack-result", help="there: the run's adapter in parts of at most 16 MB")
    packed.add_argument("run", type=Path)
    packed.add_argument("out", type=Path)
    joined = jobs.add_parser("join", help="here: the adapter from the files brought back")
    joined.add_argument("result", type=Path)
    joined.add_argument("into", type=Path)
    args = parser.parse_args(argv)
    if args.job == "make":
        make(args)
    elif args.job == "verify":
        verify(args.folder)
    elif args.job == "pack-result":
        pack_result(args.run, args.out)
    else:
        join(args.result, args.into)


if __name__ == "__main__":
    sys.exit(main())
