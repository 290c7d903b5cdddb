"""The Spark job (`nanochat/data/spark_prepare.py`) against the Python path: on the real demo corpora the
same shard files, byte for byte; on small sources with duplicates across sources and files it drops them as
`write_train_val_shards` does. One local[2] SparkSession for the module; skipped without Java or pyspark."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest

from nanochat.data.corpora import SOURCES, prepare_demo_data
from nanochat.data.shards import (
    ShardError,
    list_shards,
    num_row_groups,
    read_row_group,
    write_shards,
    write_train_val_shards,
)
from nanochat.data.sources import shakespeare_documents
from nanochat.data.spark_prepare import main, prepare_shards, session, stage_demo_sources

SHAKESPEARE = next(source for source in SOURCES if source.name == "shakespeare")


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.skip("needs Java for Spark: apt-get install -y openjdk-17-jre-headless")
    pytest.importorskip("pyspark", reason="needs pyspark: pip install 'nanochat-service[spark]'")
    spark = session("local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


def row_groups(paths) -> list[list[str]]:
    """Every shard as the trainer reads it: its row groups' documents."""
    return [[read_row_group(path, group) for group in range(num_row_groups(path))] for path in paths]


@pytest.mark.slow
@pytest.mark.integration
def test_demo_corpora_give_the_python_paths_shards(spark, tmp_path_factory):
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the KJV and the Jargon File are Debian packages")
    root = tmp_path_factory.mktemp("demo-spark")
    cache = root / "downloads"
    manifest = prepare_demo_data(root / "python", cache_dir=cache, progress=False)
    staged = stage_demo_sources(root / "raw", cache)
    assert {path.relative_to(root / "raw").parts[0] for path in staged} == {"shakespeare", "kjv", "jargon"}

    summary = prepare_shards(spark, str(root / "raw"), str(root / "spark"))

    python_shards = list_shards(root / "python" / "pretrain")
    spark_shards = list_shards(root / "spark")
    assert [p.name for p in spark_shards] == manifest["pretrain"]["shards"] == summary["shards"]
    assert summary["val_documents"] == manifest["pretrain"]["val_documents"]
    assert summary["train_documents"] == manifest["pretrain"]["train_documents"]
    assert row_groups(spark_shards) == row_groups(python_shards)
    # the same writer, so the same files (zstd, row groups of 20, no dictionary)
    assert [p.read_bytes() for p in spark_shards] == [p.read_bytes() for p in python_shards]


def test_duplicates_and_split_match_write_train_val_shards(spark, tmp_path):
    """Two sources; a text repeated in another file of the same source and in the second source is kept
    once, at its first place; a file the source does not read is ignored; blank files give nothing."""
    plays = dataclasses.replace(SHAKESPEARE, name="plays", members=r"texts/[^/]+\.txt")
    more = dataclasses.replace(SHAKESPEARE, name="more", members=r"texts/[^/]+\.txt")
    files = {
        "plays": {f"texts/{i:02d}.txt": f"Play {i}.\n\nA line of play {i}." for i in range(9)},
        "more": {f"texts/{i}.txt": f"More text {i}." for i in range(5)},
    }
    files["plays"]["texts/05.txt"] = files["plays"]["texts/02.txt"]  # a duplicate within a source
    files["more"]["texts/3.txt"] = files["plays"]["texts/07.txt"]  # and across sources
    files["more"]["texts/4.txt"] = "   \n\n "
    files["more"]["texts/notes.md"] = "not a member"
    raw = tmp_path / "raw"
    for source, members in files.items():
        for name, text in members.items():
            (raw / source / name).parent.mkdir(parents=True, exist_ok=True)
            (raw / source / name).write_text(text)
    # the Python path: sources in order, each file's documents in file-name order
    documents = [
        doc
        for source in ("plays", "more")
        for name in sorted(files[source])
        if name.endswith(".txt")
        for doc in shakespeare_documents(files[source][name])
    ]
    settings = {"seed": 7, "val_fraction": 0.2, "docs_per_shard": 4, "docs_per_row_group": 3}
    expected = write_train_val_shards(documents, tmp_path / "python", **settings)
    out = tmp_path / "spark"
    write_shards(["a stale shard"], out, 1, 1, start_index=99)  # would pose as the validation split

    with pytest.raises(ShardError, match="already holds 1 parquet file"):
        prepare_shards(spark, str(raw), str(out), sources=[plays, more], **settings)
    summary = prepare_shards(spark, str(raw), str(out), sources=[plays, more], overwrite=True, **settings)

    assert summary["documents"] == 13 and summary["duplicates_dropped"] == 2
    assert summary["train_documents"] + summary["val_documents"] == 11
    assert [p.name for p in list_shards(out)] == [p.name for p in expected]
    assert row_groups(list_shards(out)) == row_groups(expected)


def test_command_line_errors_are_one_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanochat.data.spark_prepare",
            "run",
            "--input",
            "x",
            "--out",
            "y",
            "--val-fraction",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "expected a number between 0 and 1, got '2'" in result.stderr
    with pytest.raises(SystemExit) as exited:
        main(["run", "--input", "x", "--out", "y", "--docs-per-shard", "0"])
    assert exited.value.code == 2
