"""`nanochat train ...` through the real CLI entry point: the tokenizer command on shards written here
(checked against a tokenizer trained directly on the same text), its limits and errors, and the config
flags and config errors of `train base` / `train sft` (which fail before any training starts)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from nanochat.cli import EXIT_ERROR, EXIT_USAGE, main
from nanochat.data.shards import write_shards
from nanochat.tokenizer import Tokenizer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "café", "naïve", "你好", "🦀"]
VAL_WORDS = ["zebra", "quokka", "xylophone"]  # only in the validation shard
SUMMARY = re.compile(
    r"tokenizer: vocab (\d+), trained on ([\d,]+) characters in [\d.]+s, "
    r"([\d.]+) bytes/token on the validation shard -> (.+)"
)
PROBE = "the quick brown fox jumps over the lazy dog, café 你好 🦀 zebra"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nanochat: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def documents(words: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """(data folder, training documents in shard order, validation documents): 2 training shards of 3 row
    groups each, then the validation shard."""
    folder = tmp_path_factory.mktemp("data")
    train = documents(WORDS, 60, seed=1)
    val = documents(VAL_WORDS + WORDS[:3], 8, seed=2)
    assert len(write_shards(train, folder, docs_per_shard=30, docs_per_row_group=10)) == 2
    write_shards(val, folder, docs_per_shard=30, docs_per_row_group=10, start_index=2)
    return folder, train, val


def assert_same_tokenizer(a: Tokenizer, b: Tokenizer) -> None:
    assert a.get_vocab_size() == b.get_vocab_size()
    assert a.encode(PROBE) == b.encode(PROBE)
    assert a.token_bytes.tolist() == b.token_bytes.tolist()


def test_train_tokenizer_writes_a_loadable_tokenizer_and_reports_it(tmp_path, capsys, corpus):
    data, train, val = corpus
    out = tmp_path / "tok"
    code, stdout, err = run(
        capsys, "train", "tokenizer", "--data", str(data), "--out", str(out), "--vocab-size", "300"
    )
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out.iterdir()) == ["token_bytes.pt", "tokenizer.pkl"]
    tokenizer = Tokenizer.from_directory(out)
    assert 265 < tokenizer.get_vocab_size() <= 300
    # Trained on the training shards only, all of them, in order: the same as training on them directly.
    assert_same_tokenizer(tokenizer, Tokenizer.train_from_iterator(train, 300))

    match = SUMMARY.fullmatch(stdout.strip())
    assert match, stdout
    val_text = "".join(val)
    ratio = len(val_text.encode()) / len(tokenizer.encode(val_text))
    assert int(match[1]) == tokenizer.get_vocab_size()
    assert match[2] == f"{sum(len(doc) for doc in train):,}"
    assert match[3] == f"{ratio:.2f}"
    assert match[4] == str(out)


def test_max_chars_limits_the_training_text(tmp_path, capsys, corpus):
    data, train, _ = corpus
    budget = len(train[0]) + len(train[1]) // 2  # the second document does not fit
    out = tmp_path / "small"
    code, stdout, _ = run(
        capsys, "train", "tokenizer", "--data", str(data), "--out", str(out), "--vocab-size", "400",
        "--max-chars", str(budget),
    )  # fmt: skip
    assert code == 0
    small = Tokenizer.from_directory(out)
    assert_same_tokenizer(small, Tokenizer.train_from_iterator(train[:1], 400))
    assert SUMMARY.fullmatch(stdout.strip())[2] == f"{len(train[0]):,}"
    full = Tokenizer.train_from_iterator(train, 400)  # rustbpe stops early on little text
    assert small.get_vocab_size() < full.get_vocab_size()
    assert len(small.encode(PROBE)) > len(full.encode(PROBE))


def test_doc_cap_cuts_each_document(tmp_path, capsys, corpus):
    data, train, _ = corpus
    out = tmp_path / "capped"
    code, stdout, _ = run(
        capsys, "train", "tokenizer", "--data", str(data), "--out", str(out), "--vocab-size", "300",
        "--doc-cap", "12",
    )  # fmt: skip
    assert code == 0
    assert SUMMARY.fullmatch(stdout.strip())[2] == f"{sum(min(len(doc), 12) for doc in train):,}"
    assert_same_tokenizer(
        Tokenizer.from_directory(out), Tokenizer.train_from_iterator([doc[:12] for doc in train], 300)
    )


def test_vocab_size_below_the_byte_and_special_tokens(tmp_path, capsys, corpus):
    data, _, _ = corpus
    out = tmp_path / "tok"
    code, stdout, err = run(
        capsys, "train", "tokenizer", "--data", str(data), "--out", str(out), "--vocab-size", "264"
    )
    assert (code, stdout) == (EXIT_ERROR, "")
    assert_one_line_error(err, "--vocab-size must be at least 265", "got 264")
    assert not out.exists()


def test_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    code, _, err = run(capsys, "train", "tokenizer", "--data", str(missing), "--out", str(tmp_path / "tok"))
    assert code == EXIT_ERROR
    assert_one_line_error(err, f"shard folder {missing} does not exist")
    assert not (tmp_path / "tok").exists()


def test_a_single_shard_leaves_no_validation_split(tmp_path, capsys):
    data = tmp_path / "data"
    write_shards(documents(WORDS, 5, seed=3), data, docs_per_shard=10, docs_per_row_group=5)
    code, _, err = run(capsys, "train", "tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"))
    assert code == EXIT_ERROR
    assert_one_line_error(err, "holds only shard_00000.parquet", "at least 2 shards")
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize(
    "command, flags",
    [
        (
            "base",
            ["--config", "--data", "--tokenizer", "--depth", "--num-iterations", "--matrix-lr", "--resume"],
        ),
        ("sft", ["--config", "--checkpoint", "--train", "--val", "--num-epochs", "--init-lr-frac"]),
    ],
)
def test_help_lists_the_config_flags(capsys, command, flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert re.search(rf"\s{re.escape(flag)}\b", text), flag


def test_train_tokenizer_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "tokenizer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--vocab-size VOCAB_SIZE vocabulary size (default 4096)" in text


def test_train_base_config_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "train", "base")
    assert code == EXIT_ERROR
    assert_one_line_error(err, "missing required settings: --data, --tokenizer, --out")

    required = ["--data", "d", "--tokenizer", "t", "--out", str(tmp_path / "run")]
    code, _, err = run(capsys, "train", "base", *required, "--config", str(tmp_path / "nope.toml"))
    assert code == EXIT_ERROR
    assert_one_line_error(err, "config file not found", "nope.toml")

    config = tmp_path / "run.toml"
    config.write_text("[base]\ndepth = 0\n")
    code, _, err = run(capsys, "train", "base", *required, "--config", str(config))
    assert code == EXIT_ERROR
    assert_one_line_error(err, "depth must be >= 1, got 0")

    config.write_bytes(b"# caf\xe9\n[base]\n")
    code, _, err = run(capsys, "train", "base", *required, "--config", str(config))
    assert code == EXIT_ERROR
    assert_one_line_error(err, "not valid TOML")
    assert not (tmp_path / "run").exists()


def test_train_sft_bad_flag_values_are_usage_errors(capsys):
    required = ["--checkpoint", "c", "--train", "t.jsonl", "--out", "o"]
    code, _, err = run(capsys, "train", "sft", *required, "--progress", "maybe")
    assert code == EXIT_USAGE
    assert_one_line_error(err, "--progress", "expected true or false, got 'maybe'")
    code, _, err = run(capsys, "train", "sft", *required, "--num-epochs", "two")
    assert code == EXIT_USAGE
    assert_one_line_error(err, "--num-epochs", "'two'")
    code, _, err = run(capsys, "train", "sft", *required, "--init-lr-frac", "0")
    assert code == EXIT_ERROR
    assert_one_line_error(err, "init_lr_frac must be in (0, 1], got 0.0")
