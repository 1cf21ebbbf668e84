"""Examples from any source: `read_examples(source) -> list[Example]`.

Sources, told apart by what the path is:
    JSONL manifest      one {"audio": PATH, "text": …} per line; optional "id", "language",
                        "duration" or "seconds". A relative PATH is relative to the manifest's folder.
    folder              audio files (any depth) with a .txt side file of the same stem holding the text.
    datasets folder     a Hugging Face `Dataset.save_to_disk` folder (memory-mapped, not read into RAM).
    Parquet             a .parquet file, or a folder of them (read into memory as Arrow buffers).
                        Both hold an `Audio` column: {bytes, path} structs, as `datasets` writes them.
    sound-token export  `auralm tokenize --format jsonl` lines {"path", "seconds", "codes"}, joined by
                        path with the texts of `texts=` (a manifest or folder): codes instead of audio,
                        for the LLM recipes. Relative export paths are relative to the current folder,
                        as `auralm tokenize` wrote them.
    `auralm export` DIR  a finished dataset export (export.json + shards): codes and texts, for the LLM recipes;
                        with `texts=`, only the files that manifest or folder holds, with its transcripts.

Training needs a transcript for every example. `auralm export` reads its input with `require_text=False`,
where manifests, folders and tables may lack them (`Example.text` None).

Durations (`Example.seconds`, used for bucketing and packing) come from the manifest's or table's
`duration`/`seconds` field when it has one, else from the audio file's header (soundfile.info, no
decoding), else stay None (a file that cannot be read; loading skips it later). Examples come back in
source order (folders: sorted paths), so every rank of a distributed run reads the same list.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import soundfile

from auralm.data.examples import DURATION_FIELDS, ArrowAudio, DataError, Example, duration_field, json_lines
from auralm.data.export import is_export, read_export
from auralm.data.token_lines import join_codes, token_lines_codes
from auralm.tokenizer.audio import AUDIO_SUFFIXES


def read_examples(
    source: str | os.PathLike,
    *,
    texts: str | os.PathLike | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    require_text: bool = True,
) -> list[Example]:
    """Read every example of `source` (see the module docstring for the kinds and how each is recognised).

    texts: for a sound-token export, the manifest or folder whose transcripts go with its audio paths; for an
        `auralm export` folder, a subset to train on (e.g. the clips an earlier run did not see).
    audio_column, text_column: the column names in a datasets folder or Parquet files.
    require_text: False lets examples come without a transcript (`Example.text` None).
    """
    path = Path(source)
    if is_export(path):
        exported = read_export(path)
        if texts is None:
            return exported
        codes_by_path = {os.path.realpath(e.audio): (e.codes, e.seconds) for e in exported}
        return join_codes(codes_by_path, read_examples(texts), path, texts)
    if path.is_file() and path.suffix.lower() != ".parquet" and {"path", "codes"} <= _first_row(path).keys():
        if texts is None:
            raise DataError(
                f"{path}: a sound-token export holds no transcripts: pass texts= the manifest or folder of its audio "
                "files"
            )
        return join_codes(token_lines_codes(path), read_examples(texts), path, texts)
    if texts is not None:
        raise DataError(f"{path}: texts= is only for a sound-token export; this source has its own transcripts")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".parquet" and path.is_file():
        return _read_parquet([path], path, audio_column, text_column, require_text)
    if path.is_file():
        if not {"audio", "text"} <= (keys := _first_row(path).keys()) and (require_text or "audio" not in keys):
            raise DataError(
                f"{path}: a JSON line with keys {sorted(keys)}: a manifest's lines have 'audio' and 'text', "
                "a token export's 'path' and 'codes'"
            )
        return _read_manifest(path, require_text)
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"{path}: a DatasetDict with splits {', '.join(splits)}: pass one split's folder, e.g. {path / splits[0]}"
        )
    if (path / "state.json").exists() and (path / "dataset_info.json").exists():
        return _read_table(_load_from_disk(path), path, audio_column, text_column, require_text)
    if parquet := sorted(path.rglob("*.parquet")):
        return _read_parquet(parquet, path, audio_column, text_column, require_text)
    return _read_folder(path, require_text)


def _first_row(path: Path) -> dict:
    """The first line of a JSONL file as a dict, or a DataError saying what the file is not."""
    unknown = (
        f"{path}: not a data source auralm reads: expected a JSONL manifest (audio, text), a folder of audio "
        "files with .txt side files, a datasets folder (save_to_disk), Parquet files, or an "
        "`auralm tokenize --format jsonl` export"
    )
    with path.open("rb") as f:
        line = b""
        while not line and (raw := f.readline(1 << 20)):
            line = raw.strip()
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(unknown) from e
    if not isinstance(row, dict):
        raise DataError(unknown)
    return row


def _read_manifest(path: Path, require_text: bool) -> list[Example]:
    folder = path.absolute().parent
    examples = []
    for number, row in json_lines(path):
        where = f"{path}:{number}"
        audio, text = row.get("audio"), row.get("text")
        if not isinstance(audio, str) or not audio:
            raise DataError(f"{where}: 'audio' must be a file path, got {audio!r}")
        if not isinstance(text, str) and (require_text or text is not None):
            raise DataError(f"{where}: 'text' must be a string, got {text!r}")
        if not isinstance(language := row.get("language"), (str, type(None))):
            raise DataError(f"{where}: 'language' must be a language code such as 'en', got {language!r}")
        file = str(folder / audio)
        seconds = duration_field(row, where)
        examples.append(
            Example(
                id=str(row.get("id", audio)),
                text=None if text is None else text.strip(),
                audio=file,
                language=language,
                seconds=_header_seconds(file) if seconds is None else seconds,
            )
        )
    if not examples:
        raise DataError(f"{path}: an empty manifest")
    return examples


def _header_seconds(source: str | bytes) -> float | None:
    """An audio file's length from its header, without decoding; None if it cannot be read."""
    try:
        info = soundfile.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (soundfile.SoundFileError, RuntimeError, TypeError, OSError):
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def _read_folder(path: Path, require_text: bool) -> list[Example]:
    folder = path.absolute()
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"{path}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) and no dataset or Parquet files in this folder"
        )
    untranscribed = [f for f in files if not f.with_suffix(".txt").is_file()]
    if untranscribed and require_text:
        raise DataError(
            f"{path}: {len(untranscribed)} audio files have no .txt side file with their transcript "
            f"(first: {untranscribed[0].relative_to(folder)}); add them or move those files out"
        )
    return [
        Example(
            id=f.relative_to(folder).as_posix(),
            text=_side_text(f),
            audio=str(f),
            seconds=_header_seconds(str(f)),
        )
        for f in files
    ]


def _side_text(audio: Path) -> str | None:
    """The transcript in the .txt file beside an audio file, or None when there is none."""
    side = audio.with_suffix(".txt")
    return side.read_text(encoding="utf-8").strip() if side.is_file() else None


def _load_from_disk(path: Path):
    """A `save_to_disk` folder as one memory-mapped pyarrow.Table."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"{path}: reading a datasets folder needs the `train` extra: pip install 'auralm[train]'"
        ) from e
    return datasets.load_from_disk(str(path)).with_format("arrow")[:]


def _read_parquet(
    files: list[Path], path: Path, audio_column: str, text_column: str, require_text: bool
) -> list[Example]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs the `train` extra: pip install 'auralm[train]'") from e
    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(file))
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{file}: not a readable Parquet file ({e})") from e
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:
        raise DataError(f"{path}: its Parquet files have different columns ({e}); read them one by one") from e
    return _read_table(table, path, audio_column, text_column, require_text)


def _read_table(table, path: Path, audio_column: str, text_column: str, require_text: bool) -> list[Example]:
    """Examples from a pyarrow.Table with an Audio column of {bytes, path} structs and a text column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    required = ((audio_column, "audio_column"), (text_column, "text_column"))[: 2 if require_text else 1]
    for column, option in required:
        if column not in table.column_names:
            raise DataError(
                f"{path}: no column {column!r} (it has {', '.join(table.column_names)}); name the right one with {option}="
            )
    audio_type = table.schema.field(audio_column).type
    if not (pa.types.is_struct(audio_type) and {"bytes", "path"} <= {f.name for f in audio_type}):
        raise DataError(
            f"{path}: column {audio_column!r} is {audio_type}, not an Audio column of {{bytes, path}} structs "
            "(cast it with datasets.Audio(), or name the right one with audio_column=)"
        )
    audio = table.column(audio_column)
    encoded = pc.struct_field(audio, "bytes")  # ChunkedArray of binary, zero-copy
    paths = pc.struct_field(audio, "path").to_pylist()
    rows = table.num_rows
    texts = table.column(text_column).to_pylist() if text_column in table.column_names else [None] * rows
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * rows
    languages = table.column("language").to_pylist() if "language" in table.column_names else [None] * rows
    duration = next((c for c in DURATION_FIELDS if c in table.column_names), None)
    seconds = table.column(duration).to_pylist() if duration else [None] * rows
    folder = path.absolute() if path.is_dir() else path.absolute().parent

    examples = []
    for row in range(rows):
        name = f"{path}[{row}]"
        if not isinstance(texts[row], str) and (require_text or texts[row] is not None):
            raise DataError(f"{name}: {text_column!r} must be a string, got {texts[row]!r}")
        if encoded[row].is_valid:
            source: str | ArrowAudio = ArrowAudio(encoded, row)
            length = seconds[row] if seconds[row] is not None else _header_seconds(encoded[row].as_py())
        elif paths[row]:  # an Audio column that points at files instead of holding them
            source = str(folder / paths[row])
            length = seconds[row] if seconds[row] is not None else _header_seconds(source)
        else:
            raise DataError(f"{name}: {audio_column!r} holds neither bytes nor a path")
        examples.append(
            Example(
                id=str(ids[row]) if ids[row] is not None else (paths[row] or name),
                text=None if texts[row] is None else texts[row].strip(),
                audio=source,
                language=languages[row],
                seconds=None if length is None else float(length),
            )
        )
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples
