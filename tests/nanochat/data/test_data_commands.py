"""`nanochat data ...` registered into a fresh argparse parser, as the main CLI does."""

from __future__ import annotations

import argparse

import pytest

from nanochat.data.commands import cmd_download, cmd_prepare, cmd_shards, register
from nanochat.data.corpora import CorpusError
from nanochat.data.shards import ShardError, list_shards, num_documents, split_shards


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nanochat")
    register(root.add_subparsers(dest="command", required=True))
    return root


def run(*argv: str) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


def test_data_shards_from_two_text_files(tmp_path, capsys):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n\n".join(f"First file, paragraph {i}." for i in range(30)))
    second.write_text("\n\n".join(f"Second file, paragraph {i}." for i in range(30)))
    out = tmp_path / "shards"
    assert (
        run(
            "data",
            "shards",
            "--out",
            str(out),
            "--max-chars",
            "100",
            "--docs-per-shard",
            "8",
            str(first),
            str(second),
        )
        == 0
    )
    shards = list_shards(out)
    _, val = split_shards(out)
    assert len(shards) >= 3 and val == shards[-1:]
    total = sum(num_documents(path) for path in shards)
    printed = capsys.readouterr().out
    assert f"{len(shards)} shards, {total} documents in {out}" in printed
    assert f"the last, {val[0].name}, is the validation split" in printed


def test_data_shards_bad_paths_raise_the_data_error(tmp_path):
    with pytest.raises(CorpusError, match=r"nowhere\.txt: not found"):
        run("data", "shards", "--out", str(tmp_path / "out"), str(tmp_path / "nowhere.txt"))
    text = tmp_path / "a.txt"
    text.write_text("one paragraph\n\nanother paragraph\n")
    out = str(tmp_path / "out")
    assert run("data", "shards", "--out", out, "--max-chars", "20", str(text)) == 0
    with pytest.raises(ShardError, match="already holds 2 parquet file"):
        run("data", "shards", "--out", out, "--max-chars", "20", str(text))
    assert run("data", "shards", "--out", out, "--max-chars", "20", "--overwrite", str(text)) == 0
    with pytest.raises(ShardError, match="need at least 2 distinct non-empty documents"):
        run("data", "shards", "--out", out, "--overwrite", str(text))  # one 4000-character document


def test_arguments_and_handlers():
    args = parser().parse_args(["data", "prepare", "--out", "demo"])
    assert (args.handler, args.out, args.cache, args.no_progress, args.seed, args.val_fraction) == (
        cmd_prepare,
        "demo",
        None,
        False,
        0,
        0.05,
    )
    assert args.no_synthetic is False
    assert parser().parse_args(["data", "prepare", "--out", "d", "--no-synthetic"]).no_synthetic is True
    args = parser().parse_args(["data", "download", "--repo", "o/r", "--shards", "3", "--out", "d"])
    assert (args.handler, args.shards, args.pattern, args.repo_type) == (
        cmd_download,
        3,
        "shard_{index:05d}.parquet",
        "dataset",
    )
    assert parser().parse_args(["data", "shards", "--out", "d", "f"]).handler is cmd_shards


@pytest.mark.parametrize(
    "argv",
    [
        ["data"],
        ["data", "prepare"],
        ["data", "prepare", "--out", "d", "--val-fraction", "1.5"],
        ["data", "shards", "--out", "d"],
        ["data", "shards", "--out", "d", "--max-chars", "0", "f"],
        ["data", "download", "--repo", "o/r", "--shards", "-1", "--out", "d"],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(argv)
    assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err
