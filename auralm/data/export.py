"""The `auralm export` folder format, written and read here; `export_job.py` runs the export that fills it.

job.json                       what is exported: input, tokenizer hash, shard size, format; a rerun must match
shard-00003-of-00012.parquet   id, source, duration_s, codes (list<int16>), n_tokens, text
                               (or .jsonl with the codes as a token string in `tokens`)
progress/rank-0.jsonl          the ledger: a line per finished shard (rows, seconds, inputs that failed)
errors.jsonl                   the inputs that could not be used, with the reason (written at the end)
export.json                    tokenizer config and hash, input, counts (written last: the export is complete)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from auralm.data.examples import DataError, Example
from auralm.files import write_text_atomically
from auralm.tokenizer import TokenizerConfig, codes_to_string

FORMAT = "auralm-token-export"
FORMAT_VERSION = 1
FORMATS = ("parquet", "jsonl")
EXPORT_FILE, JOB_FILE = "export.json", "job.json"  # an export folder, finished / begun


def is_export(path: Path) -> bool:
    """Whether `path` is an export folder (finished or begun)."""
    return (path / EXPORT_FILE).is_file() or (path / JOB_FILE).is_file()


def write_shard(path: Path, rows: list[dict], fmt: str, config: TokenizerConfig) -> None:
    """Write one shard atomically: rows of id, source, duration_s, codes ((T,) tensor), n_tokens, text."""
    if fmt == "jsonl":
        lines = [
            json.dumps({**{k: v for k, v in row.items() if k != "codes"}, "tokens": codes_to_string(row["codes"])})
            for row in rows
        ]
        write_text_atomically(path, "\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        code_type = pa.int16() if config.vocab_size <= np.iinfo(np.int16).max else pa.int32()
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("source", pa.string()),
                ("duration_s", pa.float32()),
                ("codes", pa.list_(code_type)),
                ("n_tokens", pa.int32()),
                ("text", pa.string()),
            ]
        )
        columns = {name: [row[name] for row in rows] for name in schema.names}
        columns["codes"] = [row["codes"].numpy().astype(code_type.to_pandas_dtype()) for row in rows]
        partial = path.with_name(path.name + ".partial")
        pq.write_table(pa.Table.from_pydict(columns, schema=schema), partial)
        os.replace(partial, path)


def shard_rows(shard: Path, vocab_size: int) -> Iterator[dict]:
    """The rows of one shard file: id, source, duration_s, codes (list of ints), n_tokens, text."""
    from auralm.tokenizer import string_to_codes

    if shard.suffix == ".jsonl":
        for line in shard.read_text().splitlines():
            row = json.loads(line)
            row["codes"] = string_to_codes(row.pop("tokens"), vocab_size).tolist()
            yield row
    else:
        import pyarrow.parquet as pq

        yield from pq.read_table(shard).to_pylist()


def read_export(folder: str | os.PathLike) -> list[Example]:
    """The rows of a finished `auralm export` folder as training examples with codes (`Example.codes`) and
    transcripts; for the LLM recipes (`train=DIR`). `Example.audio` is each row's source."""
    folder = Path(folder)
    examples = []
    for row in export_rows(folder):
        if row["text"] is None:
            raise DataError(
                f"{folder}: row {row['id']!r} has no transcript; training needs one per row "
                "(export a manifest or folder with texts)"
            )
        codes = np.asarray(row["codes"], dtype=np.int32)
        examples.append(Example(row["id"], row["text"], row["source"], seconds=row["duration_s"], codes=codes))
    if not examples:
        raise DataError(f"{folder}: an export with no rows")
    return examples


def export_rows(folder: str | os.PathLike) -> Iterator[dict]:
    """Every row of a finished export, shard by shard, in either format: id, source, duration_s,
    codes (a list of ints), n_tokens, text (None where the input had none)."""
    folder = Path(folder)
    info = export_info(folder)
    vocab_size = TokenizerConfig.from_dict(info["tokenizer"]).vocab_size
    for shard in info["shards"]:
        yield from shard_rows(folder / shard, vocab_size)


def export_info(folder: str | os.PathLike) -> dict:
    """export.json of a finished export folder (tokenizer config and hash, input, counts)."""
    folder = Path(folder)
    if not (folder / EXPORT_FILE).is_file():
        raise DataError(
            f"{folder}: an export that has not finished (no {EXPORT_FILE}); run its `auralm export` command again"
        )
    info = json.loads((folder / EXPORT_FILE).read_text())
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{folder / EXPORT_FILE}: not an auralm token export this version reads")
    return info
