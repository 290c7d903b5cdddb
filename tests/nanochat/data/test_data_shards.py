"""Parquet shards: write, list, split, read row groups, and every error a user can cause."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.data.shards import (
    ShardError,
    list_shards,
    num_documents,
    num_row_groups,
    read_row_group,
    split_shards,
    write_shards,
    write_train_val_shards,
)


def read_all(paths) -> list[str]:
    return [
        doc for path in paths for group in range(num_row_groups(path)) for doc in read_row_group(path, group)
    ]


def test_write_list_read_round_trip(tmp_path):
    documents = [f"document {i} café 🦀\nsecond line" for i in range(23)]
    documents[5] = ""  # skipped
    documents[9] = "  \n "  # whitespace only: skipped too
    paths = write_shards(iter(documents), tmp_path, docs_per_shard=10, docs_per_row_group=4)

    kept = [doc for doc in documents if doc.strip()]
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert list_shards(tmp_path) == paths
    assert [num_row_groups(p) for p in paths] == [3, 3, 1]
    assert [num_documents(p) for p in paths] == [10, 10, 1]
    assert read_row_group(paths[0], 2) == kept[8:10]
    assert read_all(paths) == kept
    column = pq.ParquetFile(paths[0]).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temporary files left


def test_start_index_continues_numbering(tmp_path):
    paths = write_shards(["a", "b", "c"], tmp_path, docs_per_shard=2, docs_per_row_group=2, start_index=7)
    assert [p.name for p in paths] == ["shard_00007.parquet", "shard_00008.parquet"]


def test_write_shards_rejects_bad_input(tmp_path):
    with pytest.raises(ShardError, match="document 1 is a int, expected str"):
        write_shards(["ok", 3], tmp_path, docs_per_shard=5, docs_per_row_group=5)
    with pytest.raises(ShardError, match="docs_per_shard must be a positive int, got 0"):
        write_shards(["ok"], tmp_path, docs_per_shard=0, docs_per_row_group=5)
    with pytest.raises(ShardError, match="docs_per_row_group must be a positive int"):
        write_shards(["ok"], tmp_path, docs_per_shard=5, docs_per_row_group=True)
    with pytest.raises(ShardError, match="start_index"):
        write_shards(["ok"], tmp_path, docs_per_shard=5, docs_per_row_group=5, start_index=-1)
    assert write_shards([], tmp_path, docs_per_shard=5, docs_per_row_group=5) == []


def test_split_shards_last_is_validation(tmp_path):
    paths = write_shards([str(i) for i in range(5)], tmp_path, docs_per_shard=2, docs_per_row_group=2)
    train, val = split_shards(tmp_path)
    assert train == paths[:2]
    assert val == [paths[2]]
    assert read_all(val) == ["4"]


def test_split_needs_two_shards(tmp_path):
    write_shards(["only"], tmp_path, docs_per_shard=2, docs_per_row_group=2)
    with pytest.raises(ShardError, match=r"holds only shard_00000\.parquet; at least 2 shards"):
        split_shards(tmp_path)


def test_list_shards_errors(tmp_path):
    with pytest.raises(ShardError, match=r"nowhere does not exist; create shards with `nanochat data"):
        list_shards(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("not a shard")
    with pytest.raises(ShardError, match=r"holds no \*\.parquet shards"):
        list_shards(tmp_path)


def test_list_shards_skips_hidden_and_other_files(tmp_path):
    write_shards(["a", "b"], tmp_path, docs_per_shard=1, docs_per_row_group=1)
    (tmp_path / ".shard_00002.parquet.123.tmp").write_bytes(b"partial")
    (tmp_path / ".hidden.parquet").write_bytes(b"partial")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "folder.parquet").mkdir()
    assert [p.name for p in list_shards(tmp_path)] == ["shard_00000.parquet", "shard_00001.parquet"]


def test_not_parquet_file_names_the_file(tmp_path):
    bad = tmp_path / "shard_00000.parquet"
    bad.write_text("this is text, not parquet")
    with pytest.raises(ShardError, match=r"shard_00000\.parquet is not a readable parquet file"):
        num_row_groups(bad)
    with pytest.raises(ShardError, match=r"shard_00000\.parquet is not a readable parquet file"):
        read_row_group(bad, 0)


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["hello"]}), path)
    with pytest.raises(ShardError, match=r"a\.parquet has no 'text' column \(columns: \['content'\]\)"):
        read_row_group(path, 0)


def test_text_column_must_hold_strings(tmp_path):
    path = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(ShardError, match="column 'text' holds int64, expected strings"):
        num_row_groups(path)


def test_null_texts_are_reported(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": pa.array(["a", None], type=pa.string())}), path)
    with pytest.raises(ShardError, match=r"row group 0 has 1 null text value"):
        read_row_group(path, 0)


def test_missing_shard_and_missing_row_group(tmp_path):
    with pytest.raises(ShardError, match=r"gone\.parquet cannot be opened"):
        num_row_groups(tmp_path / "gone.parquet")
    [path] = write_shards(["a", "b", "c"], tmp_path, docs_per_shard=3, docs_per_row_group=2)
    with pytest.raises(ShardError, match="has 2 row group"):
        read_row_group(path, 2)


def test_rewritten_shard_is_read_again(tmp_path):
    [path] = write_shards(["old"], tmp_path, docs_per_shard=5, docs_per_row_group=5)
    assert read_row_group(path, 0) == ["old"]
    write_shards(["new text", "and more"], tmp_path, docs_per_shard=5, docs_per_row_group=1)
    assert num_row_groups(path) == 2
    assert read_row_group(path, 1) == ["and more"]


def test_train_val_shards_hold_out_a_mix(tmp_path):
    documents = [f"doc {i}" for i in range(50)]
    paths = write_train_val_shards(
        documents, tmp_path, docs_per_shard=20, docs_per_row_group=8, val_fraction=0.1
    )
    train, val = split_shards(tmp_path)
    assert paths == [*train, *val]
    assert len(read_all(val)) == 5
    assert sorted(read_all(paths)) == sorted(documents)
    assert read_all(val) != documents[:5]  # shuffled before the split
    again = write_train_val_shards(documents, tmp_path / "again", docs_per_shard=20, val_fraction=0.1)
    assert read_all(again) == read_all(paths)  # the seed makes it reproducible


def test_train_val_shards_refuse_to_mix_with_old_shards(tmp_path):
    write_train_val_shards([f"d{i}" for i in range(30)], tmp_path, docs_per_shard=5)
    assert len(list_shards(tmp_path)) == 7
    with pytest.raises(ShardError, match="already holds 7 parquet file"):
        write_train_val_shards(["a", "b", "c"], tmp_path)
    paths = write_train_val_shards(["a", "b", "c"], tmp_path, overwrite=True)
    assert list_shards(tmp_path) == paths  # no stale shard left to pose as the validation split
    assert len(paths) == 2


def test_train_val_shards_keep_each_text_once(tmp_path):
    documents = ["b", "a", "b", "c", "a", "d"]  # a copy on each side would leak validation into training
    paths = write_train_val_shards(documents, tmp_path, docs_per_shard=2, val_fraction=0.25, seed=3)
    assert sorted(read_all(paths)) == ["a", "b", "c", "d"]
    # the same shuffle as the first occurrences alone: duplicates are dropped before it
    alone = write_train_val_shards(
        ["b", "a", "c", "d"], tmp_path / "alone", docs_per_shard=2, val_fraction=0.25, seed=3
    )
    assert read_all(paths) == read_all(alone)


def test_train_val_shards_need_two_documents(tmp_path):
    with pytest.raises(ShardError, match="need at least 2 distinct non-empty documents"):
        write_train_val_shards(["one", "   "], tmp_path)
    with pytest.raises(ShardError, match="need at least 2 distinct non-empty documents"):
        write_train_val_shards(["one", "one"], tmp_path)
    with pytest.raises(ShardError, match="val_fraction must be between 0 and 1"):
        write_train_val_shards(["a", "b"], tmp_path, val_fraction=1.0)
