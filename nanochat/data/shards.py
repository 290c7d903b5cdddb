"""Pretraining text in parquet shards, in the layout of the public FineWeb-Edu / ClimbMix shards.

A data folder holds `shard_00000.parquet`, `shard_00001.parquet`, ..., each with a string column `text`
(one document per row) stored in row groups. By convention the LAST shard in name order is the validation
split and every other shard is training data.

Readers address a document as (shard, row group, row). The training dataloader strides row groups across
DDP ranks and reads them through `num_row_groups` and `read_row_group`, which keep the last few files open
(an LRU keyed by path, size and modification time, so a rewritten shard is reopened).

It deliberately does not tokenize, batch or loop over epochs (the training dataloader does) and does not
download anything (`hub.py` does).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterable
from pathlib import Path

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the serving image has no training extras; reading or writing shards says so
    pa = pq = None

from nanochat.files import write_atomically

SHARD_NAME = "shard_{index:05d}.parquet"
TEXT_COLUMN = "text"
OPEN_FILES = 8  # parquet files kept open by the readers


class ShardError(ValueError):
    """A shard folder or file that cannot be used; the message names it and says what to do."""


def _need_pyarrow() -> None:
    if pa is None:
        raise ShardError("parquet shards need pyarrow: pip install 'nanochat-service[train]'")


def write_shards(
    documents: Iterable[str],
    out_dir: str | os.PathLike[str],
    docs_per_shard: int,
    docs_per_row_group: int,
    start_index: int = 0,
) -> list[Path]:
    """Write documents, in order, to `shard_{start_index:05d}.parquet`, ...; returns the paths written.

    Each shard holds `docs_per_shard` documents (the last one fewer) in row groups of `docs_per_row_group`,
    zstd-compressed, written atomically. Empty (or whitespace-only) documents are skipped.
    """
    _need_pyarrow()
    for name, value in (("docs_per_shard", docs_per_shard), ("docs_per_row_group", docs_per_row_group)):
        _check_positive(name, value)
    if isinstance(start_index, bool) or not isinstance(start_index, int) or start_index < 0:
        raise ShardError(f"start_index must be an int >= 0, got {start_index!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch: list[str] = []

    def flush() -> None:
        path = folder / SHARD_NAME.format(index=start_index + len(paths))
        table = pa.table({TEXT_COLUMN: pa.array(batch, type=pa.string())})
        write_atomically(
            path,
            lambda f: pq.write_table(
                table, f, row_group_size=docs_per_row_group, compression="zstd", use_dictionary=False
            ),
        )
        paths.append(path)
        batch.clear()

    for position, document in enumerate(documents):
        if not isinstance(document, str):
            raise ShardError(f"document {position} is a {type(document).__name__}, expected str")
        if document.strip():
            batch.append(document)
            if len(batch) == docs_per_shard:
                flush()
    if batch:
        flush()
    return paths


def write_train_val_shards(
    documents: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    docs_per_shard: int = 10_000,
    docs_per_row_group: int = 1024,
    val_fraction: float = 0.05,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Shuffle documents with `seed`, write the training shards, then one last shard holding the held-out
    `val_fraction` of them (`validation_count`). Returns every path, the validation shard last.

    Blank documents are dropped and exact duplicates kept once (the first), before the shuffle: the same
    text can then never be on both sides of the split. The Spark job (`spark_prepare.py`) does the same.

    A folder that already holds parquet files is refused unless `overwrite`, which deletes them first: a
    stale shard left after the new ones would silently become the validation split.
    """
    if not 0 < val_fraction < 1:
        raise ShardError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    unique: dict[str, None] = {}  # insertion-ordered: the first occurrence of each text
    for position, document in enumerate(documents):
        if not isinstance(document, str):
            raise ShardError(f"document {position} is a {type(document).__name__}, expected str")
        if document.strip():
            unique.setdefault(document)
    docs = list(unique)
    if len(docs) < 2:
        raise ShardError(
            f"need at least 2 distinct non-empty documents (training and validation), got {len(docs)}; "
            "add more text"
        )
    folder = Path(out_dir)
    existing = _parquet_files(folder) if folder.is_dir() else []
    if existing and not overwrite:
        raise ShardError(
            f"{folder} already holds {len(existing)} parquet file(s) (e.g. {existing[0].name}); "
            "choose an empty folder or overwrite them"
        )
    for path in existing:
        path.unlink()
    random.Random(seed).shuffle(docs)
    num_val = validation_count(len(docs), val_fraction)
    train = write_shards(docs[num_val:], folder, docs_per_shard, docs_per_row_group)
    val = write_shards(docs[:num_val], folder, num_val, docs_per_row_group, start_index=len(train))
    return train + val


def fraction_arg(text: str) -> float:
    """argparse type of a validation share: a number strictly between 0 and 1."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def validation_count(num_documents: int, val_fraction: float) -> int:
    """How many of `num_documents` (>= 2) shuffled documents are held out: `val_fraction` of them, rounded,
    at least one and at most all but one."""
    return min(num_documents - 1, max(1, round(num_documents * val_fraction)))


def list_shards(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The `*.parquet` files of a folder in name order (hidden temporary files excluded)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ShardError(
            f"shard folder {folder} does not exist; create shards with `nanochat data prepare --out DIR` "
            "(demo data) or `nanochat data shards --out DIR FILE...` (your own text)"
        )
    shards = _parquet_files(folder)
    if not shards:
        raise ShardError(
            f"{folder} holds no *.parquet shards; create them with `nanochat data prepare` or "
            "`nanochat data shards`"
        )
    return shards


def split_shards(data_dir: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """(train shards, [validation shard]): the last shard is the validation split."""
    shards = list_shards(data_dir)
    if len(shards) < 2:
        raise ShardError(
            f"{data_dir} holds only {shards[0].name}; at least 2 shards are needed because the last one "
            "is the validation split"
        )
    return shards[:-1], shards[-1:]


def num_row_groups(path: str | os.PathLike[str]) -> int:
    """How many row groups a shard has."""
    return _open_shard(path).num_row_groups


def num_documents(path: str | os.PathLike[str]) -> int:
    """How many documents (rows) a shard holds, from its footer."""
    return _open_shard(path).metadata.num_rows


def read_row_group(path: str | os.PathLike[str], index: int) -> list[str]:
    """The documents of one row group of a shard."""
    shard = _open_shard(path)
    count = shard.num_row_groups
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ShardError(f"{path} has {count} row group(s); there is no row group {index!r}")
    try:
        column = shard.read_row_group(index, columns=[TEXT_COLUMN]).column(TEXT_COLUMN)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path}: row group {index} cannot be read ({exc}); the file is damaged") from exc
    if column.null_count:
        raise ShardError(f"{path}: row group {index} has {column.null_count} null text value(s)")
    return column.to_pylist()


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShardError(f"{name} must be a positive int, got {value!r}")


def _parquet_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file()
    )


def _open_shard(path: str | os.PathLike[str]) -> pq.ParquetFile:
    _need_pyarrow()
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ShardError(f"shard {path} cannot be opened ({exc.strerror})") from None
    return _open_cached(os.fspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=OPEN_FILES)
def _open_cached(path: str, size: int, mtime_ns: int) -> pq.ParquetFile:
    """Open and check a shard; size and mtime are part of the key so a rewritten file is reopened."""
    try:
        shard = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path} is not a readable parquet file ({exc})") from exc
    schema = shard.schema_arrow
    if TEXT_COLUMN not in schema.names:
        raise ShardError(
            f"{path} has no '{TEXT_COLUMN}' column (columns: {schema.names}); shards need one string "
            f"column named '{TEXT_COLUMN}'"
        )
    field_type = schema.field(TEXT_COLUMN).type
    if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        raise ShardError(f"{path}: column '{TEXT_COLUMN}' holds {field_type}, expected strings")
    return shard
